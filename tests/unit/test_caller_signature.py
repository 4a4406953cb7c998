"""The signed caller context (common/contract/caller.py): what a signature holds to, and what
it refuses, and the settings that carry the key."""
import pytest

from common.contract.caller import (
    ENTRY_METHOD,
    SIGNATURE,
    SIGNED_AT,
    Caller,
    arguments_digest,
    entry_digest,
    sign_caller,
    verify_caller,
)
from common.contract.errors import Unauthenticated
from common.contract.settings import DEVELOPMENT_CALLER_SIGNING_KEY, SettingsError, load_settings

KEY, OTHER_KEY = b"k" * 32, b"o" * 32
BOB = {"sub": "customer:bob", "role": "customer", "customer_id": "5f0c6d2e-8a4b-4c1e-9a57-0b7f3f6b2d11"}
METHOD = "order_service.get_order"
DIGEST = arguments_digest(b'{"args": ["o-1"], "kwargs": {}}')
NOW = 1_700_000_000.0
MAX_AGE = 60


def signed(context=BOB, method=METHOD, digest=DIGEST, key=KEY, now=NOW):
    return sign_caller(key, context, method, digest, now=now)


def refusal(context, method=METHOD, digest=DIGEST, keys=(KEY,), now=NOW):
    with pytest.raises(Unauthenticated) as refused:
        verify_caller(keys, context, method, digest, MAX_AGE, now=now)
    return refused.value.details["caller_signature"]


def test_a_signed_caller_is_the_caller_it_names():
    context = signed()
    assert verify_caller((KEY,), context, METHOD, DIGEST, MAX_AGE, now=NOW + 1) == Caller(**BOB)
    assert Caller.from_context(context) == Caller(**BOB)  # what services read of it is unchanged
    assert isinstance(context[SIGNED_AT], int) and len(context[SIGNATURE]) == 64


@pytest.mark.parametrize("field, value", [("sub", "customer:mallory"), ("role", "admin"),
                                          ("customer_id", "00000000-0000-4000-8000-000000000000")])
def test_an_edited_caller_is_refused(field, value):
    assert refusal({**signed(), field: value}) == "bad"


def test_an_edited_time_is_refused():
    context = signed(now=NOW - 3600)
    assert refusal({**context, SIGNED_AT: int(NOW * 1000)}) == "bad"


def test_a_signature_for_another_method_or_other_arguments_is_refused():
    assert refusal(signed(), method="order_service.delete_order") == "bad"
    assert refusal(signed(), method="inventory_service.get_order") == "bad"
    assert refusal(signed(), digest=arguments_digest(b'{"args": ["o-2"], "kwargs": {}}')) == "bad"


def test_a_stale_or_far_future_signature_is_refused_and_a_little_skew_is_not():
    assert refusal(signed(now=NOW - MAX_AGE - 1)) == "stale"
    assert refusal(signed(now=NOW + MAX_AGE + 1)) == "stale"  # a clock far ahead
    for skew in (-MAX_AGE + 1, MAX_AGE - 1):
        assert verify_caller((KEY,), signed(now=NOW + skew), METHOD, DIGEST, MAX_AGE, now=NOW) == Caller(**BOB)


def test_a_missing_caller_or_signature_is_refused():
    assert refusal(None) == "missing"
    assert refusal({}) == "missing"
    assert refusal({"sub": "x", "role": "root"}) == "missing"  # no caller this system knows
    assert refusal(BOB) == "missing"
    assert refusal({k: v for k, v in signed().items() if k != SIGNATURE}) == "missing"


def test_a_malformed_signature_is_refused():
    assert refusal({**signed(), SIGNED_AT: "1700000000000"}) == "bad"
    assert refusal({**signed(), SIGNED_AT: True}) == "bad"
    assert refusal({**signed(), SIGNATURE: 42}) == "bad"
    assert refusal({**signed(), SIGNATURE: "00" * 32}) == "bad"


def test_another_key_is_refused_and_rotation_accepts_old_and_new():
    assert refusal(signed(key=OTHER_KEY)) == "bad"
    for key in (KEY, OTHER_KEY):
        assert verify_caller((OTHER_KEY, KEY), signed(key=key), METHOD, DIGEST, MAX_AGE, now=NOW) == Caller(**BOB)


def test_the_refusal_names_no_secret():
    context = signed(key=OTHER_KEY)
    with pytest.raises(Unauthenticated) as refused:
        verify_caller((KEY,), context, METHOD, DIGEST, MAX_AGE, now=NOW)
    assert context[SIGNATURE] not in str(refused.value.to_dict())


def test_an_unknown_caller_is_left_unsigned():
    assert sign_caller(KEY, None, METHOD, DIGEST) is None
    assert SIGNATURE not in sign_caller(KEY, {"role": "root"}, METHOD, DIGEST)


def test_an_entry_digest_covers_its_body_key_and_attempt_and_not_key_order():
    data = {"customer_id": "c", "items": [{"sku": "A", "quantity": 1}]}
    same = {"items": [{"quantity": 1, "sku": "A"}], "customer_id": "c"}
    digest = entry_digest(data, "key-1", "attempt-1")
    assert entry_digest(same, "key-1", "attempt-1") == digest
    assert len({digest, entry_digest(data, "key-2", "attempt-1"), entry_digest(data, "key-1", "attempt-2"),
                entry_digest({**data, "items": [{"sku": "A", "quantity": 2}]}, "key-1", "attempt-1")}) == 4
    context = sign_caller(KEY, BOB, ENTRY_METHOD, digest, now=NOW)
    assert verify_caller((KEY,), context, ENTRY_METHOD, digest, MAX_AGE, now=NOW) == Caller(**BOB)
    assert refusal(context, method=METHOD, digest=digest) == "bad"  # an entry's signature is for entries only


# ---- the settings -------------------------------------------------------------------

def test_the_key_list_rotates_and_each_key_must_be_long_enough():
    settings = load_settings({"CALLER_SIGNING_KEY": "n" * 20 + ", " + "o" * 20})
    assert settings.caller_signing_keys == (b"n" * 20, b"o" * 20)  # the first signs
    with pytest.raises(SettingsError) as bad:
        load_settings({"CALLER_SIGNING_KEY": "n" * 20 + ",short"})
    assert "CALLER_SIGNING_KEY" in str(bad.value) and "short" not in str(bad.value)  # never echoed


def test_production_refuses_the_development_key_even_as_an_old_one():
    real = {"ENV": "production", "JWT_SECRET": "j" * 40, "WEBHOOK_SECRET_KEY": "A" * 43 + "="}
    for key in (DEVELOPMENT_CALLER_SIGNING_KEY, "r" * 40 + "," + DEVELOPMENT_CALLER_SIGNING_KEY):
        with pytest.raises(SettingsError, match="development CALLER_SIGNING_KEY"):
            load_settings({**real, "CALLER_SIGNING_KEY": key})
    assert load_settings({**real, "CALLER_SIGNING_KEY": "r" * 40}).env == "production"


def test_the_window_must_cover_the_gateways_wait():
    with pytest.raises(SettingsError, match="CALLER_SIGNATURE_MAX_AGE_SECONDS"):
        load_settings({"CALLER_SIGNATURE_MAX_AGE_SECONDS": "5", "RPC_TIMEOUT": "10"})
