"""The Batcher's grouping under concurrent submissions: a job never holds more than ``max_lines`` calls."""

from __future__ import annotations

import threading

from llmbudget.defer import Batcher


class _Recording(Batcher):
    """A Batcher that records the groups it would send instead of sending them."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.sent: list[int] = []
        self._sent_lock = threading.Lock()

    def _run(self, group) -> None:  # noqa: ANN001 - the group as Batcher sends it
        with self._sent_lock:
            self.sent.append(len(group.calls))


def test_concurrent_calls_never_make_a_job_larger_than_max_lines() -> None:
    for _ in range(5):
        batcher = _Recording(linger=60.0, max_lines=2, poll_interval=1.0)
        start = threading.Barrier(8)

        def submit_many(batcher: _Recording = batcher, start: threading.Barrier = start) -> None:
            start.wait()
            for _ in range(100):
                batcher.submit(url="http://127.0.0.1:9/v1/chat/completions", path="/v1/chat/completions",
                               headers={"authorization": "Bearer k"}, body={"model": "m", "messages": []},
                               tenant=None, request_id=None)

        threads = [threading.Thread(target=submit_many) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for thread in threading.enumerate():
            if thread.name == "llmbudget-batch":
                thread.join(timeout=10)
        with batcher._lock:  # a last group of one may still wait for its linger
            left = [len(g.calls) for g in batcher._groups.values()]
            for g in batcher._groups.values():
                if g.timer is not None:
                    g.timer.cancel()
        assert max(batcher.sent) <= 2, sorted(batcher.sent)[-5:]
        assert sum(batcher.sent) + sum(left) == 800
