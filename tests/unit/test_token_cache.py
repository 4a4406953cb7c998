"""verify_token keeps valid tokens it has checked; expiry still counts on every use."""
import pytest

from common.contract import caller as auth
from common.contract.caller import issue_token, verify_token
from common.contract.errors import Unauthenticated

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def test_a_token_checked_once_is_refused_after_it_expires(monkeypatch):
    token = issue_token(SECRET, "someone", "admin", ttl_seconds=60)
    assert verify_token(token, SECRET).sub == "someone"
    later = auth.time.time() + 61
    monkeypatch.setattr(auth.time, "time", lambda: later)
    with pytest.raises(Unauthenticated) as refused:
        verify_token(token, SECRET)
    assert refused.value.details == {"token": "expired"}


def test_a_refused_token_is_checked_again_each_time():
    token = issue_token(SECRET, "someone", "admin")
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            verify_token(token, "another-secret-that-is-long-enough-for-hs256")
    assert verify_token(token, SECRET).role == "admin"
