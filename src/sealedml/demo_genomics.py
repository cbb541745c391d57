"""``sealedml demo genomics``: two hospitals train one model on their joint data, sharing no row.

A real platform runs on loopback with the simulated enclave. Two hospitals each hold part of a
(synthetic, seeded) gene-expression cohort with therapy response. Each encrypts its table on its
own side, uploads the ciphertext and provisions the key to the enclave it attested. Hospital A
proposes a joint job naming both datasets and both hospitals as recipients of the model key; the
enclave refuses to start until hospital B has approved the exact spec too. Then the model trains
inside the enclave; each hospital opens its own grant and decrypts the model locally, and the
metrics are printed (and could be charted) outside the enclave. Finally a table says what each
party could and could not see.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from sealedml.errors import NotFoundError

MARK_YES = "[green]yes[/]"
MARK_NO = "[red]no[/]"


def development_policy(url: str) -> Any:
    """The policy a party writes for a local simulated platform: the measurement of the enclave
    code it reviewed (computed here) and, for this development demo only, the simulated root."""
    from sealedml.attestation.measurement import compute_measurement
    from sealedml.attestation.policy import AppraisalPolicy
    from sealedml.client import SealedMLClient

    with SealedMLClient(url) as anonymous:
        bundle = anonymous.fetch_evidence(os.urandom(32))
    return AppraisalPolicy(
        allow_simulated=True,
        reference_measurements=(compute_measurement(),),
        max_evidence_age_seconds=300,
        allow_debug=False,
        simulated_roots=(hashlib.sha256(bundle.certificates[-1]).hexdigest(),),
    )


def visibility_table(title: str, parties: list[str], rows: list[tuple[str, list[bool]]]) -> Table:
    """A table of what each party could (yes) and could not (no) see."""
    table = Table(title=title)
    table.add_column("")
    for party in parties:
        table.add_column(party, justify="center")
    for item, seen in rows:
        table.add_row(item, *[MARK_YES if s else MARK_NO for s in seen])
    return table


def _state(console: Console, job: Any) -> None:
    where = f"{job.phase}, {job.progress}%" if job.progress is not None else str(job.phase)
    extra = f" — waiting for {', '.join(d[:8] + '…' for d in job.waiting_for)}" if job.waiting_for else ""
    console.print(f"  job {job.id[:8]}…: [bold]{job.status}[/] ({where}){extra}", highlight=False)


def run_genomics_demo(
    console: Console,
    data_dir: Path | None = None,
    *,
    n_genes: int = 2000,
    n_patients: int = 300,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the joint-training showcase and print every step; return its key numbers.

    Raises ``SealedMLError`` if any step is rejected (the demo never hides a failure).
    """
    from sealedml.cli import claims_table, warn_if_simulated
    from sealedml.cli_training import show_outcome
    from sealedml.client import SealedMLClient
    from sealedml.client._training import public_hex
    from sealedml.datasets.genomics import LABEL, CohortParameters, generate_cohort
    from sealedml.platform.launch import platform_in_background
    from sealedml.platform.settings import Settings

    started = time.perf_counter()
    workdir = data_dir or Path(tempfile.mkdtemp(prefix="sealedml-genomics-"))
    workdir.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]SealedML showcase: joint training on two hospitals' gene-expression data")
    settings = Settings(data_dir=workdir / "platform-data", anchor="none")
    with platform_in_background(settings) as server:
        console.print(f"platform listening on {server.url} (its data in {settings.data_dir})")
        admin_token = settings.admin_token_path.read_text().strip()
        suffix = os.urandom(3).hex()
        with SealedMLClient(server.url, admin_token) as admin:
            tokens = {
                "A": admin.create_account(f"hospital-a-{suffix}", "data_owner")["token"],
                "B": admin.create_account(f"hospital-b-{suffix}", "data_owner")["token"],
            }
        policy = development_policy(server.url)

        # 1. Each hospital has its own share of the cohort, on its own machine.
        console.rule("1. each hospital holds its own patients")
        cohort = generate_cohort(CohortParameters(n_genes=n_genes, n_patients=n_patients, seed=seed))
        files: dict[str, Path] = {}
        for key, hospital in zip(("A", "B"), cohort.hospitals, strict=True):
            files[key] = workdir / f"{hospital.name}.parquet"
            pq.write_table(hospital.to_table(), files[key])
            console.print(
                f"hospital {key}: {hospital.expression.shape[0]} patients x {n_genes} genes + {LABEL!r} "
                f"({int(hospital.response.sum())} responders) in {files[key].name}",
                highlight=False,
            )
        canary = files["B"].read_bytes()[:64]  # the start of hospital B's plaintext file

        # 2. Each hospital attests the enclave, encrypts its file locally and provisions the key.
        console.rule("2. attest, encrypt locally, upload ciphertext, provision the key")
        approval = {k: ed25519.Ed25519PrivateKey.generate() for k in ("A", "B")}
        recipient = {k: x25519.X25519PrivateKey.generate() for k in ("A", "B")}
        datasets: dict[str, Any] = {}
        evidence: dict[str, tuple[str, float]] = {}
        for key in ("A", "B"):
            with SealedMLClient(server.url, tokens[key], policy=policy) as client:
                result = client.attest()
                if key == "A":
                    warn_if_simulated(result)
                    console.print(claims_table(result))
                uploaded = client.training.upload_file(
                    files[key], f"genes-{key.lower()}-{suffix}", approval_key=approval[key]
                )
            datasets[key] = uploaded
            console.print(
                f"hospital {key}: uploaded {uploaded.info.blob_size:,} bytes of ciphertext; the enclave "
                f"confirmed {uploaded.confirmation['rows']} rows x "
                f"{uploaded.confirmation['columns']} columns with schema {uploaded.schema_sha256[:16]}… "
                f"(its answer is sealed to hospital {key})",
                highlight=False,
            )

        # 3. Hospital A proposes the joint job; B's dataset id was shared with it out of band.
        console.rule("3. hospital A proposes a joint job; both hospitals must approve it")
        with SealedMLClient(server.url, tokens["A"], policy=policy) as a_client:
            spec = a_client.training.build_spec(
                [datasets["A"].info.id, datasets["B"].info.id],
                label=LABEL,
                algorithm="logistic_regression",
                params={"C": 0.05},
                recipients=[public_hex(recipient["A"]), public_hex(recipient["B"])],
                seed=seed,
            )
            submission, job = a_client.training.submit(spec)
            evidence["A"] = a_client.training.last_evidence or ("", 0.0)
            console.print(
                f"job {job.id} submitted: logistic regression (C=0.05) on both datasets, model key "
                f"for both hospitals, spec sha256 {submission.spec_sha256[:16]}…",
                highlight=False,
            )
            a_client.training.approve(job.id, {datasets["A"].info.id: approval["A"]})
            waiting = a_client.training.job(job.id)
            _state(console, waiting)
            if waiting.status != "awaiting_approval":  # pragma: no cover - would be a consent bug
                raise AssertionError("the job was queued without hospital B's approval")

            # Hospital B reviews the spec (its digest is recomputed locally) and approves it.
            with SealedMLClient(server.url, tokens["B"], policy=policy) as b_client:
                shown = b_client.training.job(job.id)
                console.print(
                    f"hospital B reviews job {shown.id[:8]}…: {shown.spec['algorithm']} on "
                    f"{len(shown.spec['datasets'])} datasets, {len(shown.spec['recipients'])} recipients "
                    f"(its own key among them: {public_hex(recipient['B']) in shown.spec['recipients']})",
                    highlight=False,
                )
                b_client.training.approve(shown, {datasets["B"].info.id: approval["B"]})
                evidence["B"] = b_client.training.last_evidence or ("", 0.0)
            console.print("both owners approved: the enclave checked both Ed25519 signatures")

            # 4. The enclave trains; the platform reports the phases.
            console.rule("4. training inside the enclave")
            latest = [submission]
            final = a_client.training.wait(
                job.id,
                submission=submission,
                on_update=lambda j: _state(console, j),
                on_refresh=lambda s: latest.__setitem__(0, s),
            )
            outcome = a_client.training.outcome(latest[0], final)
        show_outcome(outcome, title="Released validation metrics (formatted outside the enclave)")

        # 5. Each recipient decrypts the model with its own grant.
        console.rule("5. each hospital opens its grant and decrypts the model locally")
        digests = {}
        for key in ("A", "B"):
            with SealedMLClient(server.url, tokens[key], policy=policy) as client:
                fetched = client.training.fetch_model(job.id, recipient[key], evidence=evidence[key])
            digests[key] = fetched.model_sha256
            console.print(
                f"hospital {key}: decrypted {len(fetched.onnx_bytes):,} bytes of ONNX "
                f"(sha256 {fetched.model_sha256[:16]}…), {len(fetched.input_columns)} gene inputs",
                highlight=False,
            )
        if digests["A"] != digests["B"]:  # pragma: no cover - the enclave encrypted one model
            raise AssertionError("the hospitals decrypted different models")

        # A party outside the job cannot even see it.
        with SealedMLClient(server.url, admin_token) as admin:
            outsider = admin.create_account(f"outsider-{suffix}", "data_owner")["token"]
        with SealedMLClient(server.url, outsider, policy=policy) as client:
            try:
                client.training.job(job.id)
            except NotFoundError as exc:  # exactly as for a job that does not exist
                console.print(f"an outside account asking for the job gets: [red]{exc.code}[/]")
            else:  # pragma: no cover - would be a tenant-isolation bug
                raise AssertionError("an outside account could read the job")
        in_clear = any(canary in path.read_bytes() for path in settings.data_dir.rglob("*") if path.is_file())

    console.rule("what each party could see")
    console.print(
        visibility_table(
            "Visibility (the enclave is the only place rows and keys exist in clear)",
            ["hospital A", "hospital B", "platform host", "enclave"],
            [
                ("hospital A's patient rows", [True, False, False, True]),
                ("hospital B's patient rows", [False, True, False, True]),
                ("hospital A's data key", [True, False, False, True]),
                ("hospital B's data key", [False, True, False, True]),
                ("the shared schema (agreed between the hospitals)", [True, True, False, True]),
                ("the job spec (label, algorithm, recipients)", [True, True, True, True]),
                ("whether each owner approved (signature checked)", [True, True, True, True]),
                ("the model key and the trained model", [True, True, False, True]),
                ("released metrics", [True, True, False, True]),
                ("ciphertext sizes and digests", [True, True, True, True]),
                ("signed receipt", [True, True, True, True]),
            ],
        )
    )
    console.print(
        "the platform's files (blobs, database, logs) searched for the first 64 bytes of hospital B's "
        f"plaintext file: {'[red]FOUND[/]' if in_clear else '[green]absent[/]'}",
        highlight=False,
    )
    elapsed = time.perf_counter() - started
    console.print(
        Panel(
            f"done in {elapsed:.1f} s — validation accuracy {outcome.metrics['accuracy']:.3f}, "
            f"ROC AUC {outcome.metrics['roc_auc']:.3f}; no hospital saw the other's rows",
            border_style="green",
        )
    )
    return {
        "job": job.id,
        "accuracy": outcome.metrics["accuracy"],
        "roc_auc": outcome.metrics["roc_auc"],
        "model_sha256": digests["A"],
        "canary_in_clear": in_clear,
        "seconds": elapsed,
    }
