"""An executable testee written in Python: serves the testee protocol (see
``conformance/README.md`` and :mod:`safeload.conformance.testee`) for any
Python loader. It is the protocol's executable specification, a template for
testees in other languages, and how the harness's executable path is tested::

    safeload conform --loader "exec:python -m safeload.conformance.pytestee mypkg.io:load"

Tensors with an even index are reported by SHA-256, odd ones as a bytes file,
so both reply forms are exercised.
"""
from __future__ import annotations

import json
import os
import struct
import sys
from typing import Any, BinaryIO


def read_message(stream: BinaryIO) -> dict[str, Any] | None:
    head = stream.read(4)
    if len(head) < 4:
        return None  # the harness closed the pipe: exit
    (n,) = struct.unpack("<I", head)
    return json.loads(stream.read(n))


def write_message(stream: BinaryIO, msg: dict[str, Any]) -> None:
    body = json.dumps(msg).encode()
    stream.write(struct.pack("<I", len(body)) + body)
    stream.flush()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m safeload.conformance.pytestee MODULE:FUNC", file=sys.stderr)
        return 2
    # The protocol owns stdout; anything the loader prints goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    from safeload.conformance.worker import digest, resolve_loader

    load = resolve_loader(argv[0])
    while True:
        req = read_message(inp)
        if req is None:
            return 0
        if req.get("op") == "hello":
            write_message(out, {"ok": True, "protocol": 1, "name": f"pytestee {argv[0]}"})
            continue
        try:
            result = load(req["path"], req["device"])
        except Exception as e:
            write_message(out, {"ok": False, "error_type": f"{type(e).__module__}.{type(e).__qualname__}",
                                "error_code": getattr(e, "code", None) if isinstance(getattr(e, "code", None), str) else None,
                                "message": str(e)[:500]})
            continue
        tensors = []
        for i, (name, t) in enumerate(result.items()):
            entry = {"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                     "device": str(t.device)}
            if i % 2 == 0:
                entry["sha256"], entry["nbytes"] = digest(t)
            else:
                entry["bytes_file"] = f"{i}.bin"
                from safeload._bytes import byte_view

                with open(os.path.join(req["out_dir"], f"{i}.bin"), "wb") as f:
                    if t.numel():
                        f.write(byte_view(t.contiguous()).cpu().numpy().tobytes())
            tensors.append(entry)
        write_message(out, {"ok": True, "tensors": tensors})


if __name__ == "__main__":
    sys.exit(main())
