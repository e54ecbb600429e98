from tests.conftest import ApiClient


def test_admin_creates_user_with_full_remaining_quota(api: ApiClient) -> None:
    reply = api.post("/api/users", {"user_id": "alice", "email": "alice@example.com", "quota": 100})
    assert reply.status == 201, reply.body
    assert reply.body["remaining_quota"] == 100
    assert api.get("/api/users/alice", user="alice").body["quota"] == 100


def test_non_admin_cannot_create_users(api: ApiClient) -> None:
    reply = api.post("/api/users", {"user_id": "bob", "email": "bob@example.com", "quota": 1}, user="bob")
    assert reply.status == 403
    assert reply.body["error"] == "forbidden"


def test_user_cannot_see_another_user(api: ApiClient) -> None:
    api.post("/api/users", {"user_id": "alice", "email": "alice@example.com", "quota": 1})
    assert api.get("/api/users/alice", user="mallory").status == 404


def test_invalid_email_names_the_field(api: ApiClient) -> None:
    reply = api.post("/api/users", {"user_id": "alice", "email": "not-an-email", "quota": 1})
    assert reply.status == 422
    assert reply.body["details"][0]["field"] == "email"
