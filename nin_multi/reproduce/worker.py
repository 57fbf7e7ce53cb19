"""One backend's reproduce worker (``python -m nin_multi.reproduce.worker NAME``, started by ``reproduce``
on the backend's interpreter): it loads its framework and says so, then answers requests on stdin,
``setup`` (the model on the shared start, saved by the parent, and its trainer) and ``train`` (the epochs,
into the backend's folder of the run directory), until stdin closes. It trains through the same
``InProcess`` as the in-process API, so the two give the same numbers."""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from ..config import TrainConfig
from ..interpreters import emit, failure_event
from ..optim import SGDSettings
from ..train import load_data, spec_for
from ..weights import load_weights
from .runner import InProcess


def _log(message: str) -> None:
    emit("log", message=message)


def serve(name: str, requests) -> int:
    from nin_multi import backends

    (module,) = backends.load_backends([name])
    host, data = InProcess(module), {}
    emit("loaded", name=module.NAME)
    for line in requests:
        if not line.strip():
            continue
        req = json.loads(line)
        cfg = TrainConfig.from_dict(req["cfg"])
        spec = spec_for(cfg)
        if req["op"] == "setup":
            _, start = load_weights(req["start"])
            host.setup(cfg, spec, start, SGDSettings(**req["sgd"]), Path(req["start"]))
            emit("ready")
        elif req["op"] == "train":
            key = (cfg.data_dir, cfg.subset, cfg.test_subset)
            if key not in data:  # the same slice for every start
                data = {key: load_data(cfg)}
            result = host.train(spec, cfg, data[key], Path(req["run_dir"]), req["title"], _log)
            del result["final"]  # in the backend's weights file, which the parent reads
            emit("result", result=result)
    return 0


def main(argv) -> int:
    try:
        return serve(argv[0], sys.stdin)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it there
        if not isinstance(e, Exception):
            raise  # Ctrl-C, SystemExit: the parent sees the exit
        from ..errors import NinMultiError

        if not isinstance(e, NinMultiError):
            traceback.print_exc()
        emit("failure", **failure_event(e))
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
