"""The marketplace against a real platform and simulated enclave: listings, live attestation
verdicts, dataset offers, paid predictions and the usage report."""

from __future__ import annotations

import csv
import json

import pytest

from sealedml.client._market import report_summary, write_report_chart, write_report_csv
from sealedml.errors import AuthError, BillingError, InputError, NotFoundError
from sealedml.platform.launch import platform_in_background
from sealedml.platform.settings import Settings


@pytest.fixture
def market_world(platform, cancer, unique):
    provider, owner = (
        platform.account(unique("prov"), "provider"),
        platform.account(unique("hosp"), "data_owner"),
    )
    with platform.client(provider) as client:
        model = client.publish_model(
            unique("risk"),
            cancer.prepared,
            description="breast cancer screening",
            price_per_row=2,
            version="2.1",
        ).model
    return {"provider": provider, "owner": owner, "model": model}


def test_listing_shows_price_schema_and_a_passing_enclave(platform, market_world, cancer):
    with platform.client(market_world["owner"]) as client:
        listing = client.market.model(market_world["model"].id)
        assert listing["price_per_row"] == 2 and listing["version"] == "2.1"
        assert listing["input_columns"] == cancer.features
        assert listing["attestation_passing"] is True, listing["attestation_reason"]
        assert listing["tee"] == "simulated"
        (resource,) = client.market.resources(refresh=True)
        assert resource["passing"] is True and resource["error_code"] is None
        assert resource["claims"]["measurement"] == resource["measurement"]
        assert resource["claims"]["simulated"] is True and resource["evidence_age_seconds"] < 60


def test_search_and_filters(platform, market_world):
    name = market_world["model"].name
    with platform.client(market_world["owner"]) as client:
        assert name in [m["name"] for m in client.market.models(query="SCREENING")]
        assert name not in [m["name"] for m in client.market.models(query="no-such-words")]
        assert name not in [m["name"] for m in client.market.models(max_price=1)]
        assert name in [m["name"] for m in client.market.models(max_price=2, passing=True)]
        assert name not in [m["name"] for m in client.market.models(passing=False)]
        assert client.market.models(tee="sgx") == []
        with pytest.raises(NotFoundError) as info:
            client.market.model("0" * 32)
        assert info.value.code == "not_found.listing"


def test_paid_predictions_show_up_in_the_report(platform, market_world, cancer, tmp_path):
    with platform.client(platform.admin_token) as admin, platform.client(market_world["owner"]) as owner:
        owner_id = owner.me()["id"]
        with pytest.raises(BillingError) as info:
            owner.predict(market_world["model"].id, cancer.test.iloc[:5])
        assert info.value.code == "billing.insufficient_credit"
        assert admin.market.grant(owner_id, 50) == 50
        owner.predict(market_world["model"].id, cancer.test.iloc[:5])
        owner.predict(market_world["model"].id, cancer.test.iloc[:7])
        assert owner.me()["balance"] == 50 - 2 * 12
        rows = [r for r in owner.market.report() if r["model_id"] == market_world["model"].id]
        assert sorted(r["rows"] for r in rows) == [5, 7] and sum(r["amount"] for r in rows) == 24
        jobs = {job["id"] for job in owner.list_jobs()}
        assert {r["job_id"] for r in rows} <= jobs
    with platform.client(market_world["provider"]) as provider:
        assert provider.me()["balance"] == 24
        summary = report_summary(provider.market.report())
        assert summary["model"][market_world["model"].name] == {"uses": 2, "rows": 12, "credits": 24}
        report = provider.market.report()
    write_report_csv(report, tmp_path / "usage.csv")
    with (tmp_path / "usage.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 2
    write_report_chart(report, tmp_path / "usage.png")
    assert (tmp_path / "usage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError):
        write_report_chart(report, tmp_path / "usage.svg")


def test_dataset_offers_are_metadata_only(platform, market_world, unique):
    name = unique("expression")
    with platform.client(market_world["owner"]) as owner:
        offered = owner.market.offer_dataset(
            name,
            columns=[("BRCA1", "float"), ("TP53", "float"), ("response", "category")],
            rows=312,
            size_bytes=9_800_000,
            description="tumour expression panel",
            price=40,
        )
        assert set(offered) == {
            "id",
            "name",
            "owner",
            "description",
            "columns",
            "rows",
            "size_bytes",
            "price",
            "created_at",
        }
        assert [d["name"] for d in owner.market.datasets(query="tumour")] == [name]
        for bad in (
            {"columns": [("a", "blob")]},
            {"columns": [("a", "float"), ("a", "int")]},
            {"rows": -1},
            {"price": -5},
        ):
            args = {"columns": [("a", "float")], "rows": 1, "size_bytes": 1, "price": 0} | bad
            with pytest.raises((InputError, BillingError)):
                owner.market.offer_dataset(unique("bad"), **args)  # type: ignore[arg-type]
        with pytest.raises(InputError) as info:
            owner.market.offer_dataset(name, columns=[("a", "float")], rows=1, size_bytes=1)
        assert info.value.code == "input.conflict"
    with platform.client(market_world["provider"]) as provider, pytest.raises(AuthError):
        provider.market.offer_dataset(unique("x"), columns=[("a", "float")], rows=1, size_bytes=1)


def test_enclave_outside_the_policy_turns_every_listing_red(tmp_path, cancer):
    """A platform whose policy pins another measurement shows its enclave, and its models, failing."""
    settings = Settings(data_dir=tmp_path / "data", reference_measurements=("00" * 48,))
    with platform_in_background(settings) as server:
        from sealedml.client import SealedMLClient

        admin_token = (tmp_path / "data" / "admin-token").read_text().strip()
        with SealedMLClient(server.url, admin_token) as admin:
            (resource,) = admin.market.resources(refresh=True)
            assert resource["passing"] is False
            assert resource["error_code"] == "attestation.measurement_mismatch"
            assert "not a reference measurement" in resource["error_message"]


def test_market_cli(platform, market_world, cancer, tmp_path, unique):
    from typer.testing import CliRunner

    from sealedml.cli import app

    runner = CliRunner()

    def run(token: str, *args: str):
        command, *rest = args
        return runner.invoke(app, ["market", command, "--url", platform.url, "--token", token, *rest])

    data = tmp_path / "cohort.csv"
    cancer.train.iloc[:40].to_csv(data, index=False)
    name = unique("cohort")
    offered = run(market_world["owner"], "offer", name, "--data", str(data), "--price", "3", "--json")
    assert offered.exit_code == 0, offered.output
    listing = json.loads(offered.stdout)
    assert listing["rows"] == 40 and {"name": "target", "type": "int"} in listing["columns"]
    models = run(market_world["owner"], "models", "--query", market_world["model"].name, "--json")
    assert [m["name"] for m in json.loads(models.stdout)] == [market_world["model"].name]
    assert run(market_world["provider"], "price", market_world["model"].name, "1").exit_code == 0
    with platform.client(market_world["owner"]) as owner:
        owner_id = owner.me()["id"]
    granted = run(platform.admin_token, "credit", owner_id, "10")
    assert granted.exit_code == 0 and "10 credits" in granted.stderr
    refused = run(platform.admin_token, "credit", owner_id, "--", "-10")
    assert refused.exit_code == 1 and "billing.invalid_amount" in refused.stderr
    with platform.client(market_world["owner"]) as owner:
        owner.predict(market_world["model"].id, cancer.test.iloc[:4])
    report = run(
        market_world["provider"],
        "report",
        "--csv",
        str(tmp_path / "u.csv"),
        "--chart",
        str(tmp_path / "u.png"),
    )
    assert report.exit_code == 0, report.output
    assert "Per model" in report.stderr and (tmp_path / "u.png").stat().st_size > 1000
    assert len((tmp_path / "u.csv").read_text().splitlines()) == 2
    resources = run(market_world["owner"], "resources", "--refresh")
    assert resources.exit_code == 0 and "PASS" in resources.stderr
