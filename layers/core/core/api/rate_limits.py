"""Per-user rate limits kept on the user item (sender creations, test sends): a counter per fixed
window, taken with conditional updates so concurrent requests cannot exceed the limit."""

from __future__ import annotations

import math

from core.errors import Forbidden, TooManyRequests
from core.storage.models import UserModel, update_if

SENDER_WINDOW_SECONDS = 3600


def take_sender_creation(user_id: str, now: float, limit: int) -> None:
    """Counts one sender creation in the current hour; TooManyRequests (with the seconds until
    the window turns) when `limit` were already made."""
    window = math.floor(now / SENDER_WINDOW_SECONDS) * SENDER_WINDOW_SECONDS
    user = UserModel(user_id)
    for _ in range(2):  # a lost race with another request opening the same window: count again
        if update_if(
            user,
            [UserModel.senders_in_window.add(1)],
            (UserModel.sender_window == window) & (UserModel.senders_in_window < limit),
        ):
            return
        if update_if(
            user,
            [UserModel.sender_window.set(window), UserModel.senders_in_window.set(1)],
            UserModel.user_id.exists()
            & (UserModel.sender_window.does_not_exist() | (UserModel.sender_window < window)),
        ):
            return
    try:
        current = UserModel.get(user_id, consistent_read=True, attributes_to_get=["sender_window"])
    except UserModel.DoesNotExist as error:
        raise Forbidden("you have no user record; ask an administrator to create one") from error
    if current.sender_window != window:  # another request moved the window meanwhile
        raise TooManyRequests("too many senders created at once; retry", retry_after=1)
    retry_after = math.ceil(window + SENDER_WINDOW_SECONDS - now)
    raise TooManyRequests(
        f"at most {limit} senders can be created per hour; retry in {retry_after} s", retry_after=retry_after
    )


TEST_SEND_WINDOW_SECONDS = 3600


def take_test_send(user_id: str, now: float, min_interval: float, per_hour: int) -> None:
    """Counts one test send: at least `min_interval` seconds after the user's last one and at most
    `per_hour` in the current clock hour. TooManyRequests (with the seconds until one is allowed)
    otherwise. Both limits sit in one conditional update, so concurrent requests cannot pass them."""
    window = math.floor(now / TEST_SEND_WINDOW_SECONDS) * TEST_SEND_WINDOW_SECONDS
    user = UserModel(user_id)
    spaced = UserModel.last_test_send_at.does_not_exist() | (UserModel.last_test_send_at <= now - min_interval)
    for _ in range(2):  # a lost race with another request opening the same window: count again
        if update_if(
            user,
            [UserModel.test_sends_in_window.add(1), UserModel.last_test_send_at.set(now)],
            (UserModel.test_send_window == window) & (UserModel.test_sends_in_window < per_hour) & spaced,
        ):
            return
        if update_if(
            user,
            [
                UserModel.test_send_window.set(window),
                UserModel.test_sends_in_window.set(1),
                UserModel.last_test_send_at.set(now),
            ],
            UserModel.user_id.exists()
            & (UserModel.test_send_window.does_not_exist() | (UserModel.test_send_window < window))
            & spaced,
        ):
            return
    try:
        current = UserModel.get(
            user_id,
            consistent_read=True,
            attributes_to_get=["test_send_window", "test_sends_in_window", "last_test_send_at"],
        )
    except UserModel.DoesNotExist as error:
        raise Forbidden("you have no user record; ask an administrator to create one") from error
    last = current.last_test_send_at
    if last is not None and last > now - min_interval:
        retry_after = math.ceil(last + min_interval - now)
        raise TooManyRequests(
            f"test sends must be at least {min_interval:g} s apart; retry in {retry_after} s", retry_after=retry_after
        )
    if current.test_send_window == window and (current.test_sends_in_window or 0) >= per_hour:
        retry_after = math.ceil(window + TEST_SEND_WINDOW_SECONDS - now)
        raise TooManyRequests(
            f"at most {per_hour} test sends per hour; retry in {retry_after} s", retry_after=retry_after
        )
    raise TooManyRequests("too many test sends at once; retry", retry_after=1)  # another request moved the window
