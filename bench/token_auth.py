"""Benchmark: API-token authentication per request, against its floor.

Every API request pays for authentication: parse the bearer token, find the row by key, compare
the HMAC digest, check expiry, revocation, user state and IP networks. Its floor is the one
indexed SELECT by key that no implementation can avoid. Both are measured side by side in one
run, on the same database, so the ratio means something on a noisy shared machine.

Also measured: a whole ``GET /api/v1/me/`` through Django's test client (middleware, DRF,
serialisation) with the same token, to show what share of a request authentication is.

Run: ``make bench NAME=token_auth``. The last line is one JSON object.
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "remotegpu.settings.dev")

import django

django.setup()

from django.db import connection  # noqa: E402
from django.test import Client, RequestFactory  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402
from rest_framework.request import Request  # noqa: E402

from accounts.api.authentication import APITokenAuthentication  # noqa: E402
from accounts.models import APIToken, User  # noqa: E402
from accounts.services.tokens import token_create  # noqa: E402

ROUNDS = 5
PER_ROUND = 2000


def per_second(function, count: int) -> float:
    best = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(count):
            function()
        best.append(count / (time.perf_counter() - start))
    return statistics.median(best)


def main() -> None:
    setup_test_environment()
    user, _ = User.objects.get_or_create(email="bench-token@remotegpu.local")
    APIToken.objects.filter(user=user).delete()
    # Tokens of other users, so the key lookup searches a realistic index.
    issued = token_create(user=user, name="bench", write_enabled=True)
    others = [
        APIToken(user=user, name=f"other-{i}", key=f"k{i:011d}", digest="0" * 64)
        for i in range(10000)
    ]
    APIToken.objects.bulk_create(others, ignore_conflicts=True)
    key = issued.token.key

    factory = RequestFactory()
    http_request = factory.get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {issued.plaintext}")
    authentication = APITokenAuthentication()

    def authenticate():
        authentication.authenticate(Request(http_request))

    with connection.cursor() as cursor:

        def floor():
            cursor.execute(
                "SELECT t.id, t.digest, u.is_active FROM accounts_apitoken t "
                "JOIN accounts_user u ON u.id = t.user_id WHERE t.key = %s",
                [key],
            )
            cursor.fetchone()

        floor_per_s = per_second(floor, PER_ROUND)
    auth_per_s = per_second(authenticate, PER_ROUND)

    client = Client(HTTP_AUTHORIZATION=f"Bearer {issued.plaintext}")
    assert client.get("/api/v1/me/").status_code == 200

    def whole_request():
        client.get("/api/v1/me/")

    request_per_s = per_second(whole_request, PER_ROUND // 10)

    APIToken.objects.filter(user=user).delete()
    user.delete()
    figures = {
        "bench": "token_auth",
        "per_s": round(auth_per_s),
        "floor_per_s": round(floor_per_s),
        "ratio": round(floor_per_s / auth_per_s, 2),
        "me_requests_per_s": round(request_per_s),
        "auth_share_of_request": round(request_per_s / auth_per_s, 3),
    }
    print(f"token authentication: {figures['per_s']}/s")
    print(f"floor, one indexed SELECT: {figures['floor_per_s']}/s")
    print(f"whole GET /api/v1/me/ through Django + DRF: {figures['me_requests_per_s']}/s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
