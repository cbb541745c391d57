"""Showcase data: the synthetic genomics cohort, the real heart-disease table, dataset encryption."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from sealedml.crypto.stream import decrypt_bytes, read_stream_header
from sealedml.datasets.files import (
    CSV,
    PARQUET,
    encrypt_dataset_file,
    encrypt_table,
    schema_sha256,
    table_bytes,
)
from sealedml.datasets.genomics import LABEL, CohortParameters, gene_names, generate_cohort
from sealedml.datasets.heart import FEATURES, cleveland_path, load_cleveland
from sealedml.errors import InputError

SMALL = CohortParameters(n_genes=300, n_patients=240, n_informative=12, seed=4)


def test_the_cohort_is_deterministic_and_split_across_hospitals() -> None:
    first, again = generate_cohort(SMALL), generate_cohort(SMALL)
    other = generate_cohort(CohortParameters(**{**SMALL.__dict__, "seed": 5}))
    assert [h.name for h in first.hospitals] == ["hospital_a", "hospital_b"]
    assert [h.expression.shape for h in first.hospitals] == [(144, 300), (96, 300)]
    for a, b in zip(first.hospitals, again.hospitals, strict=True):
        assert np.array_equal(a.expression, b.expression) and np.array_equal(a.response, b.response)
    assert not np.array_equal(first.hospitals[0].expression, other.hospitals[0].expression)
    assert first.informative_genes == again.informative_genes and len(first.informative_genes) == 12
    for hospital in first.hospitals:
        assert hospital.expression.dtype == np.float32 and (hospital.expression > 0).all()
        assert np.isfinite(hospital.expression).all() and set(np.unique(hospital.response)) == {0, 1}


def test_default_cohort_matches_the_documented_size() -> None:
    cohort = generate_cohort()
    assert sum(h.expression.shape[0] for h in cohort.hospitals) == 300
    assert {h.expression.shape[1] for h in cohort.hospitals} == {2000}
    assert len(cohort.informative_genes) == 20 and gene_names(2000)[-1] == "G2000"


def test_the_signal_is_in_the_informative_genes_only() -> None:
    cohort = generate_cohort(CohortParameters(n_genes=300, n_patients=400, n_informative=12, seed=8))
    x = np.log(np.vstack([h.expression for h in cohort.hospitals]))
    y = np.concatenate([h.response for h in cohort.hospitals])
    genes = gene_names(300)
    informative = [genes.index(g) for g in cohort.informative_genes]
    others = [i for i in range(300) if i not in informative][:12]

    def auc(columns: list[int]) -> float:
        scores = cross_val_predict(
            LogisticRegression(max_iter=2000), x[:, columns], y, cv=4, method="predict_proba"
        )
        return float(roc_auc_score(y, scores[:, 1]))

    assert auc(informative) > 0.8
    assert auc(others) < 0.62
    # The loadings' signs show up as the direction of each gene's association with response.
    for gene in cohort.informative_genes[:5]:
        j = genes.index(gene)
        direction = np.corrcoef(x[:, j], y)[0, 1]
        assert np.sign(direction) == np.sign(cohort.loadings[gene])


def test_hospitals_differ_by_a_batch_effect() -> None:
    params = CohortParameters(n_genes=400, n_patients=400, batch_log_sd=0.5, hospital_scale_sd=0.0, seed=2)
    a, b = generate_cohort(params).hospitals
    gap = np.abs(np.log(a.expression).mean(axis=0) - np.log(b.expression).mean(axis=0))
    none = CohortParameters(**{**params.__dict__, "batch_log_sd": 0.0})
    a0, b0 = generate_cohort(none).hospitals
    gap0 = np.abs(np.log(a0.expression).mean(axis=0) - np.log(b0.expression).mean(axis=0))
    assert gap.mean() > 3 * gap0.mean()


@pytest.mark.parametrize(
    "change",
    [
        {"n_informative": 0},
        {"n_informative": 400},
        {"hospital_shares": (0.5, 0.6)},
        {"hospitals": ("only",)},
        {"response_rate": 1.0},
        {"module_loading_high": 1.0},
        {"n_patients": 3},
    ],
)
def test_impossible_parameters_are_refused(change: dict) -> None:
    with pytest.raises(InputError):
        generate_cohort(CohortParameters(**{**SMALL.__dict__, **change}))


def test_hospital_tables_share_one_schema() -> None:
    a, b = generate_cohort(SMALL).hospitals
    ta, tb = a.to_table(), b.to_table()
    assert ta.schema == tb.schema and ta.column_names[-1] == LABEL
    assert schema_sha256(ta.schema) == schema_sha256(tb.schema)


def test_heart_data_is_the_deduplicated_cleveland_table() -> None:
    heart = load_cleveland()
    assert cleveland_path().name == "heart_disease_data.csv"
    assert heart.features.shape == (302, 13) and heart.duplicates_removed == 304
    assert np.unique(np.column_stack([heart.features, heart.target]), axis=0).shape[0] == 302
    assert heart.columns == FEATURES and set(np.unique(heart.target)) == {0, 1}
    assert 40 < heart.features[:, 0].mean() < 70  # age
    table = heart.to_table()
    assert table.num_rows == 302 and table.column_names[-1] == "target"


def test_heart_loader_refuses_other_files(tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(InputError):
        load_cleveland(other)


@pytest.mark.parametrize("content_type", [PARQUET, CSV])
def test_encrypted_tables_carry_their_schema_inside(content_type: str) -> None:
    table = generate_cohort(SMALL).hospitals[0].to_table()
    encrypted = encrypt_table(table, content_type=content_type)
    assert read_stream_header(encrypted.blob).content_type == content_type
    assert (
        b"G0001" not in encrypted.blob and hashlib.sha256(encrypted.blob).hexdigest() == encrypted.blob_sha256
    )
    plain = decrypt_bytes(encrypted.key, encrypted.blob, expected_content_type=content_type)
    if content_type == PARQUET:
        assert pq.read_table(io.BytesIO(plain)).equals(table)
    else:
        assert plain == table_bytes(table, CSV) and plain.startswith(b'"G0001"')
    # CSV re-infers int64 / double: the canonical schema is the same either way.
    assert encrypted.schema_sha256 == schema_sha256(table.schema)


def test_large_files_encrypt_as_a_stream(tmp_path: Path) -> None:
    table = pa.table(
        {"x": pa.array(np.arange(200_000, dtype=np.float64)), "y": pa.array(np.arange(200_000) % 2)}
    )
    source, target = tmp_path / "data.parquet", tmp_path / "data.sml"
    pq.write_table(table, source)
    encrypted = encrypt_dataset_file(source, target, content_type=PARQUET)
    blob = target.read_bytes()
    assert hashlib.sha256(blob).hexdigest() == encrypted.blob_sha256 and encrypted.blob == b""
    assert decrypt_bytes(encrypted.key, blob) == source.read_bytes()
    assert encrypted.schema_sha256 == schema_sha256(table.schema)
    with pytest.raises(InputError):
        encrypt_dataset_file(tmp_path / "missing.parquet", tmp_path / "x.sml", content_type=PARQUET)
