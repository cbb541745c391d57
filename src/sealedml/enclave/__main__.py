"""Entry point of the enclave process: ``python -m sealedml.enclave --platform-dir DIR [--tee KIND]``.

``--tee`` picks the platform: ``simulated`` (default; protects nothing), ``sgx`` (inside
Gramine-SGX), ``sev-snp`` or ``tdx`` (inside a confidential VM, through configfs-tsm).

It speaks the framed protocol on stdin/stdout and logs to stderr. Logs carry codes and error
types only, never request contents.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from sealedml.enclave.framing import encode_frame, read_frame
from sealedml.errors import SealedMLError

log = logging.getLogger("sealedml.enclave")


def _serve(enclave: Any, inp: BinaryIO, out: BinaryIO, workers: int) -> None:
    write_lock = threading.Lock()

    def reply(header: dict[str, Any], parts: tuple[bytes, ...] = ()) -> None:
        frame = encode_frame(header, parts)
        with write_lock:
            out.write(frame)
            out.flush()

    def run(header: dict[str, Any], parts: list[bytes]) -> None:
        rid = header.get("id")
        try:
            answer = enclave.handle(str(header.get("op")), header, parts)
            reply({"id": rid, "ok": True, **answer.header}, answer.parts)
        except SealedMLError as exc:
            log.info("rejected %s: %s", header.get("op"), exc.code)
            reply({"id": rid, "ok": False, "error": exc.to_dict()})
        except Exception as exc:
            log.error("internal error in %s: %s", header.get("op"), type(exc).__name__)
            reply(
                {
                    "id": rid,
                    "ok": False,
                    "error": {"code": "enclave.internal", "message": "internal enclave error"},
                }
            )

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="enclave") as pool:
        while True:
            try:
                frame = read_frame(inp)
            except SealedMLError as exc:
                log.error("protocol violation from host: %s", exc.code)
                return
            if frame is None:
                return
            header, parts = frame
            if header.get("op") == "shutdown":
                return
            pool.submit(run, header, parts)


def main(argv: list[str] | None = None) -> int:
    """Run the enclave until the host closes the channel; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m sealedml.enclave")
    parser.add_argument("--platform-dir", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tee", choices=("simulated", "sgx", "sev-snp", "tdx"), default="simulated")
    parser.add_argument(
        "--tee-root",
        type=Path,
        default=None,
        help="testing only: a fake /dev/attestation (sgx) or /sys/kernel/config/tsm/report (sev-snp, tdx)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="enclave %(levelname)s %(message)s", stream=sys.stderr)

    # The protocol owns the real stdout; anything printed by a library goes to stderr instead.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    from sealedml.attestation.measurement import compute_measurement
    from sealedml.enclave.hw_platforms import open_platform
    from sealedml.enclave.runtime import Enclave

    try:
        platform = open_platform(args.tee, args.platform_dir, root=args.tee_root)
    except SealedMLError as exc:
        log.error("cannot open the %s platform: [%s] %s", args.tee, exc.code, exc.message)
        return 3
    enclave = Enclave(platform=platform, measurement=compute_measurement())
    if platform.simulated:
        log.warning("SIMULATED TEE: this enclave offers NO protection from the host")
    else:
        log.info("running on %s hardware", platform.tee)
    _serve(enclave, sys.stdin.buffer, out, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
