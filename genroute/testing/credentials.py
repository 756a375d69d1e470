"""Google application-default credentials for tests against the loopback server.

Code that finds its credentials itself (``google.auth.default()``: the ``genroute`` CLI, a Vertex AI engine built
without ``credentials``) reads the file ``GOOGLE_APPLICATION_CREDENTIALS`` names. ``write_credentials`` writes an
``authorized_user`` file holding an access token valid for a day, so nothing is refreshed (google-auth always
refreshes such a file against Google's own token endpoint, which a test must never reach)::

    with GeminiTestServer() as srv:
        os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = str(write_credentials(tmp_path / "adc.json"))
        # ... code under test calls Vertex AI paths on srv ...
        assert srv.requests[-1].headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from genroute.errors import UsageError

#: The bearer token every request made with these credentials carries.
ACCESS_TOKEN = "loopback-access-token"


def write_credentials(path: str | Path, *, token: str = ACCESS_TOKEN, project: str = "loopback-project") -> Path:
    """An ``authorized_user`` credentials file at ``path`` whose ``token`` stays valid for a day."""
    expiry = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if not isinstance(path, str | os.PathLike) or "\x00" in os.fspath(path):  # a TypeError or ValueError from pathlib
        raise UsageError(f"must be a file path without NUL characters, not {path!r:.40}", field="path")
    path = Path(path)
    path.write_text(json.dumps({"type": "authorized_user", "client_id": "loopback-client",
                                "client_secret": "loopback-secret", "refresh_token": "loopback-refresh-token",
                                "token": token, "expiry": expiry, "quota_project_id": project}), encoding="utf-8")
    return path
