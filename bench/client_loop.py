"""A bounded OpenAI-compatible client loop (threads, N requests at most, T seconds at most, a
timeout per request) counting requests served and failed; used by bench/rolling_upgrade.py and
tests/lab/test_fleet.py to watch a fleet through its gateway during an upgrade."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LoopResult:
    served: int = 0
    failed: int = 0
    errors: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    #: served requests per "X-LLMFleet-Standin" version seen (which image answered)
    versions: Counter = field(default_factory=Counter)


class ClientLoop:
    """Chat completions against ``base_url`` from ``threads`` threads until stopped, ``max_requests``
    were sent or ``max_seconds`` passed. A request counts as served when it returns 200 with a choice.

    + base_url: ``http://<gateway>:<port>``
    + key: API key (Bearer)
    + model: served model name
    + headers: further request headers (``{"x-session-id": "conv-1"}``: one conversation)
    """

    def __init__(self, base_url: str, key: str | None, model: str, threads: int = 4, max_requests: int = 5000,
                 max_seconds: float = 600, timeout_s: float = 15, pause_s: float = 0.02,
                 headers: dict[str, str] | None = None) -> None:
        self.base_url, self.key, self.model = base_url.rstrip("/"), key, model
        self.headers = dict(headers or {})
        self.threads, self.max_requests, self.max_seconds = threads, max_requests, max_seconds
        self.timeout_s, self.pause_s = timeout_s, pause_s
        self.result = LoopResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sent = 0
        self._workers: list[threading.Thread] = []
        self._started = 0.0

    def one(self) -> tuple[bool, str]:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": "Say hi."}],
                           "max_tokens": 4, "temperature": 0}).encode()
        req = urllib.request.Request(f"{self.base_url}/v1/chat/completions", data=body, method="POST")
        req.add_header("Content-Type", "application/json")
        if self.key:
            req.add_header("Authorization", f"Bearer {self.key}")
        for name, value in self.headers.items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                payload = json.loads(resp.read() or b"{}")
                version = resp.headers.get("X-LLMFleet-Standin", "?")
                if resp.status == 200 and payload.get("choices"):
                    return True, version
                return False, f"HTTP {resp.status} without choices"
        except urllib.error.HTTPError as exc:
            return False, f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            return False, exc.__class__.__name__

    def _work(self) -> None:
        deadline = self._started + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self._sent >= self.max_requests:
                    return
                self._sent += 1
            ok, detail = self.one()
            with self._lock:
                if ok:
                    self.result.served += 1
                    self.result.versions[detail] += 1
                else:
                    self.result.failed += 1
                    self.result.errors[detail] += 1
            time.sleep(self.pause_s)

    def start(self) -> "ClientLoop":
        self._started = time.monotonic()
        self._workers = [threading.Thread(target=self._work, daemon=True) for _ in range(self.threads)]
        for t in self._workers:
            t.start()
        return self

    def stop(self) -> LoopResult:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=self.timeout_s + 5)
        self.result.seconds = round(time.monotonic() - self._started, 1)
        return self.result

    def run(self) -> LoopResult:
        """Send until ``max_requests`` or ``max_seconds``, then return the result."""
        self.start()
        for t in self._workers:
            t.join(timeout=self.max_seconds + self.timeout_s + 5)
        return self.stop()

    def __enter__(self) -> "ClientLoop":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
