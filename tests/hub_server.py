"""A loopback stand-in for the Hugging Face Hub, speaking enough of its HTTP API for huggingface_hub's uploads
(`create_repo`, `upload_folder`/`create_commit` with regular and LFS files) and downloads (`hf_hub_download`,
`snapshot_download`, transformers' `from_pretrained`), for tests without the internet.

Model repositories, and Spaces for uploads (kept as `spaces/<id>` in `repos`); no authentication, no Xet storage
(clients must set `HF_HUB_DISABLE_XET=1`). Files whose name ends in a binary suffix (the Hub's default
`.gitattributes`) or that are 10 MiB or larger go through the Git LFS batch API and a PUT upload to this server; the
others travel base64-encoded inside the commit, as on the Hub.

    server = HubServer().start()      # http://127.0.0.1:<free port>; point clients at it with HF_ENDPOINT
    ...
    server.stop()

`server.unhandled` lists the requests no route answered (each got a 404), so a test can show what a client wanted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["HubServer"]

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".msgpack", ".npz", ".zip", ".gz")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()


def git_blob_id(content: bytes) -> str:
    """The git object id (sha1) of a blob, as the Hub reports for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class StoredFile:
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def pointer(self) -> bytes:
        text = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.content)}\n"
        return text.encode()

    @property
    def etag(self) -> str:
        """What the Hub puts in (X-Linked-)ETag: the sha256 for LFS files, the git blob id otherwise."""
        return self.sha256 if self.lfs else git_blob_id(self.content)


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, StoredFile]


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)

    def resolve(self, revision: str) -> Commit | None:
        if revision in ("main", "HEAD"):
            return self.commits[-1]
        return next((commit for commit in self.commits if commit.oid == revision), None)


class HubError(Exception):
    """An error response: status, message (body `error` and `X-Error-Message`), `X-Error-Code`, extra body fields."""

    def __init__(self, status: int, message: str, error_code: str | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.error_code, self.extra = status, message, error_code, extra


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_MODELS_OR_SPACES = r"/api/(?:models|(?P<space>spaces))"
_ROUTES: list[tuple[tuple[str, ...], re.Pattern, str]] = [
    (("GET",), re.compile(r"/api/whoami-v2"), "whoami"),
    (("POST",), re.compile(r"/api/repos/create"), "create_repo"),
    (("POST",), re.compile(r"/api/validate-yaml"), "validate_yaml"),
    (("POST",), re.compile(rf"{_MODELS_OR_SPACES}/{_REPO}/preupload/(?P<revision>[^/]+)"), "preupload"),
    (("POST",), re.compile(rf"{_MODELS_OR_SPACES}/{_REPO}/commit/(?P<revision>[^/]+)"), "commit"),
    (("GET",), re.compile(rf"/api/models/{_REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.+))?"), "tree"),
    (("GET",), re.compile(rf"/api/models/{_REPO}(?:/revision/(?P<revision>[^/]+))?"), "model_info"),
    (("POST",), re.compile(rf"/{_REPO}\.git/info/lfs/objects/batch"), "lfs_batch"),
    (("PUT",), re.compile(r"/lfs-upload/(?P<oid>[0-9a-f]{64})"), "lfs_upload"),
    (("GET", "HEAD"), re.compile(rf"/{_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)"), "resolve"),
]


class HubServer:
    """In-memory Hub: repositories with a linear commit history on `main`, plus an LFS object store."""

    def __init__(self, user: str = "tester"):
        self.user = user
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.unhandled: list[str] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ---------------------------------------------------------------------------------------------------- state

    def _repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _commit(self, repo_id: str, revision: str) -> Commit:
        commit = self._repo(repo_id).resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _add_commit(self, repo: Repo, message: str, files: dict[str, StoredFile]) -> Commit:
        digest = hashlib.sha1(f"{repo.repo_id}\n{len(repo.commits)}\n{message}".encode())
        for path in sorted(files):
            digest.update(f"\n{path}:{files[path].etag}".encode())
        commit = Commit(oid=digest.hexdigest(), message=message, files=files)
        repo.commits.append(commit)
        return commit

    @staticmethod
    def _is_lfs(path: str, size: int) -> bool:
        return path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE

    # --------------------------------------------------------------------------------------------------- routes

    def whoami(self, request) -> dict:
        return {"type": "user", "name": self.user, "fullname": self.user, "orgs": [], "auth": {"type": "access_token"}}

    def create_repo(self, request) -> dict:
        payload = request.json()
        if payload.get("type", "model") not in ("model", "space"):
            raise HubError(400, "this test server only hosts model repositories and Spaces")
        if payload.get("type") == "space" and not payload.get("sdk"):
            raise HubError(400, "a Space needs an sdk")
        prefix = "spaces/" if payload.get("type") == "space" else ""
        repo_id = f"{prefix}{payload.get('organization') or self.user}/{payload['name']}"
        url = f"{self.endpoint}/{repo_id}"
        if repo_id in self.repos:
            raise HubError(409, "You already created this model repo", url=url)
        repo = Repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        self._add_commit(repo, "initial commit", {".gitattributes": StoredFile(GITATTRIBUTES, lfs=False)})
        self.repos[repo_id] = repo
        return {"url": url, "name": repo_id, "id": hashlib.md5(repo_id.encode()).hexdigest()[:24]}

    def validate_yaml(self, request) -> dict:
        return {"errors": [], "warnings": []}

    def preupload(self, request, repo: str, revision: str, space: str | None = None) -> dict:
        repo = f"spaces/{repo}" if space else repo
        head = self._commit(repo, revision)
        files = []
        for entry in request.json()["files"]:
            path, size = entry["path"], int(entry["size"])
            existing = head.files.get(path)
            files.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if self._is_lfs(path, size) else "regular",
                    "shouldIgnore": False,
                    "oid": existing.etag if existing is not None else None,
                }
            )
        return {"files": files, "commitOid": head.oid}

    def lfs_batch(self, request, repo: str) -> dict:
        self._repo(repo)
        payload = request.json()
        if payload.get("operation") != "upload":
            raise HubError(400, "only LFS uploads are supported")
        objects = []
        for item in payload["objects"]:
            entry: dict[str, Any] = {"oid": item["oid"], "size": item["size"], "authenticated": True}
            if item["oid"] not in self.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.endpoint}/lfs-upload/{item['oid']}", "expires_in": 3600}}
            objects.append(entry)
        return {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def lfs_upload(self, request, oid: str) -> dict:
        content = request.body
        if hashlib.sha256(content).hexdigest() != oid:
            raise HubError(400, f"uploaded content does not match LFS oid {oid}")
        self.lfs_objects[oid] = content
        return {}

    def commit(self, request, repo: str, revision: str, space: str | None = None) -> dict:
        repo = f"spaces/{repo}" if space else repo
        target = self._repo(repo)
        if revision != "main":
            raise HubError(400, "this test server only commits to main")
        lines = [json.loads(line) for line in request.body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the commit payload must start with a header line")
        header = lines[0]["value"]
        parent = header.get("parentCommit")
        if parent is not None and parent != target.commits[-1].oid:
            raise HubError(412, f"parent commit {parent} is not the head of main")
        files = dict(target.commits[-1].files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"{path}: unsupported encoding {value.get('encoding')}")
                files[path] = StoredFile(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                content = self.lfs_objects.get(value["oid"])
                if content is None:
                    raise HubError(422, f"{path}: LFS object {value['oid']} was never uploaded")
                files[path] = StoredFile(content, lfs=True)
            elif key == "deletedFile":
                files.pop(path, None)
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                files = {name: stored for name, stored in files.items() if not name.startswith(prefix)}
            else:
                raise HubError(400, f"unsupported commit operation {key!r}")
        commit = self._add_commit(target, header.get("summary", ""), files)
        return {
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{self.endpoint}/{repo}/commit/{commit.oid}",
            "pullRequestUrl": None,
        }

    def model_info(self, request, repo: str, revision: str | None = None) -> dict:
        target = self._repo(repo)
        commit = self._commit(repo, revision or "main")
        return {
            "id": repo,
            "modelId": repo,
            "sha": commit.oid,
            "private": target.private,
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
            "tags": [],
        }

    def tree(self, request, repo: str, revision: str, path: str | None = None) -> list:
        commit = self._commit(repo, revision)
        prefix = f"{path.strip('/')}/" if path else ""
        recursive = request.query.get("recursive", "false").lower() == "true"
        entries, folders = [], set()
        for name in sorted(commit.files):
            if not name.startswith(prefix):
                continue
            relative = name[len(prefix) :]
            if "/" in relative and not recursive:
                folders.add(prefix + relative.split("/")[0])
                continue
            if recursive:
                parts = relative.split("/")[:-1]
                folders.update(prefix + "/".join(parts[: i + 1]) for i in range(len(parts)))
            stored = commit.files[name]
            entry = {"type": "file", "path": name, "size": len(stored.content)}
            if stored.lfs:
                entry["oid"] = git_blob_id(stored.pointer)
                entry["lfs"] = {"oid": stored.sha256, "size": len(stored.content), "pointerSize": len(stored.pointer)}
            else:
                entry["oid"] = git_blob_id(stored.content)
            entries.append(entry)
        return [{"type": "directory", "path": folder, "oid": "0" * 40} for folder in sorted(folders)] + entries

    def resolve(self, request, repo: str, revision: str, path: str):
        commit = self._commit(repo, revision)
        stored = commit.files.get(path)
        if stored is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        headers = {"ETag": f'"{stored.etag}"', "X-Repo-Commit": commit.oid, "Accept-Ranges": "none"}
        if stored.lfs:
            headers.update({"X-Linked-Etag": f'"{stored.sha256}"', "X-Linked-Size": str(len(stored.content))})
        return _Raw(stored.content, headers)

    # -------------------------------------------------------------------------------------------------- handler

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # keep test output clean
                pass

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _dispatch(self) -> None:
                url = urlsplit(self.path)
                request = _Request(self.command, url.path, url.query, self._read_body())
                for methods, pattern, name in _ROUTES:
                    match = pattern.fullmatch(url.path)
                    if self.command in methods and match:
                        arguments = {key: unquote(value) for key, value in match.groupdict().items() if value}
                        try:
                            with server._lock:
                                result = getattr(server, name)(request, **arguments)
                        except HubError as error:
                            headers = {"Content-Type": "application/json", "X-Error-Message": error.message}
                            if error.error_code:
                                headers["X-Error-Code"] = error.error_code
                            body = json.dumps({"error": error.message, **error.extra}).encode()
                            self._send(error.status, body, headers)
                            return
                        if isinstance(result, _Raw):
                            headers = {"Content-Type": "application/octet-stream", **result.headers}
                            self._send(200, result.content, headers)
                        else:
                            self._send(200, json.dumps(result).encode(), {"Content-Type": "application/json"})
                        return
                server.unhandled.append(f"{self.command} {self.path}")
                self._send(404, b'{"error": "not implemented by the test Hub"}', {"Content-Type": "application/json"})

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

        return Handler


@dataclass
class _Request:
    method: str
    path: str
    query_string: str
    body: bytes

    @property
    def query(self) -> dict[str, str]:
        return dict(part.split("=", 1) if "=" in part else (part, "") for part in self.query_string.split("&") if part)

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


@dataclass
class _Raw:
    content: bytes
    headers: dict[str, str]
