"""A local HTTP server speaking the part of the Hub API that `huggingface_hub` uses to commit files.

Tests point `HF_ENDPOINT` (or `endpoint=`) at it and then check what arrived. It implements, with the
request and response shapes `huggingface_hub` expects: `whoami-v2` (token check), `repos/create`,
`branch`, `validate-yaml` (README metadata must parse into a mapping), `preupload` (safetensors go
through LFS, everything else inline), the LFS batch API with basic single-PUT transfers (the
uploaded bytes are checked against their sha256 oid), and `commit` (NDJSON; pull requests land on
`refs/pr/N`). Xet storage is not spoken: clients must run with `HF_HUB_DISABLE_XET=1`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import yaml

TOKEN = "hf_fake_write_token"
USER = "tester"


@dataclass
class Commit:
    repo_id: str
    revision: str
    summary: str
    files: list[str]


@dataclass
class FakeHub:
    """Server state: repositories as folders under `root/<repo_id>/<revision>/`, plus a commit log."""

    root: Path
    repos: dict[str, dict] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)
    url: str = ""

    def tree(self, repo_id: str, revision: str = "main") -> Path:
        return self.root / repo_id / revision


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, payload: dict | None = None) -> None:
            data = json.dumps(payload or {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {TOKEN}":
                return True
            self._send(401, {"error": "Invalid credentials in Authorization header"})
            return False

        def do_GET(self):
            if urlparse(self.path).path == "/api/whoami-v2":
                if self._authorized():
                    self._send(200, {"type": "user", "name": USER, "auth": {"accessToken": {"role": "write"}}})
                return
            self._send(404, {"error": f"not found: {self.path}"})

        def do_PUT(self):
            match = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", urlparse(self.path).path)
            if not match:
                return self._send(404, {"error": f"not found: {self.path}"})
            data = self._body()
            if hashlib.sha256(data).hexdigest() != match.group(1):
                return self._send(400, {"error": "sha256 mismatch"})
            hub.blobs[match.group(1)] = data
            self._send(200)

        def do_POST(self):
            url = urlparse(self.path)
            path, query = unquote(url.path), parse_qs(url.query)
            body = self._body()
            if path == "/api/validate-yaml":
                return self._validate_yaml(json.loads(body))
            if not self._authorized():
                return
            if path == "/api/repos/create":
                payload = json.loads(body)
                repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
                if repo_id in hub.repos:
                    return self._send(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"})
                hub.repos[repo_id] = {"private": payload.get("visibility") == "private", "branches": {"main"}, "prs": 0}
                hub.tree(repo_id).mkdir(parents=True)
                return self._send(200, {"url": f"{hub.url}/{repo_id}"})
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/branch/(.+)", path):
                repo = hub.repos[m.group(1)]
                if m.group(2) in repo["branches"]:
                    return self._send(409, {"error": "branch exists"})
                repo["branches"].add(m.group(2))
                hub.tree(m.group(1), m.group(2)).mkdir(parents=True)
                return self._send(200)
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/(.+)", path):
                files = json.loads(body)["files"]
                return self._send(200, {"files": [
                    {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular",
                     "shouldIgnore": False, "oid": None} for f in files]})
            if m := re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
                objects = json.loads(body)["objects"]
                return self._send(200, {"transfer": "basic", "objects": [
                    {"oid": o["oid"], "size": o["size"], "authenticated": True,
                     "actions": {"upload": {"href": f"{hub.url}/lfs-upload/{o['oid']}"}}} for o in objects]})
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/(.+)", path):
                return self._commit(m.group(1), m.group(2), body, "create_pr" in query)
            self._send(404, {"error": f"not found: {self.path}"})

        def _validate_yaml(self, payload: dict) -> None:
            text = payload["content"]
            try:
                metadata = yaml.safe_load(text.split("---\n")[1]) if text.startswith("---\n") else None
            except yaml.YAMLError as e:
                return self._send(400, {"errors": [{"message": f"YAML: {e}"}]})
            if not isinstance(metadata, dict):
                return self._send(400, {"errors": [{"message": "metadata must be a YAML mapping"}]})
            self._send(200, {"warnings": []})

        def _commit(self, repo_id: str, revision: str, body: bytes, create_pr: bool) -> None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._send(404, {"error": "Repository not found"})
            if create_pr:
                repo["prs"] += 1
                revision = f"refs/pr/{repo['prs']}"
            elif revision not in repo["branches"]:
                return self._send(404, {"error": f"Invalid rev id: {revision}"})
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            header, files = lines[0], lines[1:]
            tree = hub.tree(repo_id, revision)
            written = []
            for item in files:
                value = item["value"]
                if item["key"] == "file":
                    data = base64.b64decode(value["content"])
                elif item["key"] == "lfsFile":
                    if value["oid"] not in hub.blobs:
                        return self._send(400, {"error": f"LFS object {value['oid']} was never uploaded"})
                    data = hub.blobs[value["oid"]]
                else:
                    return self._send(400, {"error": f"unsupported operation {item['key']}"})
                target = tree / value["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                written.append(value["path"])
            hub.commits.append(Commit(repo_id, revision, header["value"]["summary"], written))
            oid = hashlib.sha1(body).hexdigest()
            self._send(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                             "pullRequestUrl": f"{hub.url}/{repo_id}/discussions/{repo['prs']}" if create_pr else None})

    return Handler


class serve_fake_hub:
    """Context manager: a `FakeHub` served on a free localhost port, its URL in `.url`."""

    def __init__(self, root: Path):
        self.hub = FakeHub(root)

    def __enter__(self) -> FakeHub:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.hub))
        self.hub.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self.hub

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
