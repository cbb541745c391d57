"""A seeded synthetic gene-expression cohort with therapy response, split across hospitals.

No registry package ships real expression data with a treatment outcome, so the confidential
joint-training showcase uses this documented generator. It is *synthetic*: it models the shape of
the problem (many genes, few patients, a sparse signal, site effects), not any real biology.

Generative model (all logarithms natural; every draw from one ``numpy`` generator seeded with
``seed``, in a fixed order, so the same parameters always give the same cohort):

1. Genes ``g = 1..G``: baseline log-expression ``mu_g ~ N(baseline_log_mean, baseline_log_sd)``
   and biological spread ``sigma_g = expression_log_sd * U(0.6, 1.4)``.
2. Informative genes: a set ``S`` of ``n_informative`` genes drawn uniformly without replacement.
   They form one co-expressed pathway: each loads on a per-patient pathway activity
   ``a_i ~ N(0, 1)`` with loading ``lambda_g = ±U(module_loading_low, module_loading_high)``
   (random sign). Other genes load on nothing (``lambda_g = 0``).
3. Hospitals ``h``: patients are assigned by ``hospital_shares`` (shuffled). Each hospital has a
   global shift ``s_h ~ N(0, hospital_scale_sd)`` (library size, platform) and a per-gene batch
   effect ``b_hg ~ N(0, batch_log_sd)``.
4. Patient ``i`` at hospital ``h``: biological state per gene
   ``z_ig = lambda_g a_i + sqrt(1 - lambda_g^2) e_ig`` with ``e_ig ~ N(0, 1)`` (so ``z_ig ~ N(0, 1)``);
   expression ``x_ig = exp(mu_g + sigma_g z_ig + b_hg + s_h)`` — log-normal per gene, stored as
   float32.
5. Therapy response ``y_i ~ Bernoulli(sigmoid(logit(response_rate) + effect_scale * a_i))``: driven
   by the pathway's biology only, so the site effects are a nuisance a model must see through,
   and the signal is spread thinly over the ``n_informative`` genes among thousands.

Each hospital's table has the gene columns ``G0001..`` (float) and the label ``response``
(integer 0/1): the same schema at every hospital, as a joint job requires.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from sealedml.errors import InputError

LABEL = "response"


@dataclass(frozen=True)
class CohortParameters:
    """Every knob of the generator; the defaults give 2000 genes x 300 patients at two hospitals."""

    n_genes: int = 2000
    n_patients: int = 300
    n_informative: int = 20
    hospitals: tuple[str, ...] = ("hospital_a", "hospital_b")
    hospital_shares: tuple[float, ...] = (0.6, 0.4)
    baseline_log_mean: float = 2.0
    baseline_log_sd: float = 1.0
    expression_log_sd: float = 0.5
    batch_log_sd: float = 0.2
    hospital_scale_sd: float = 0.1
    effect_scale: float = 3.0
    module_loading_low: float = 0.6
    module_loading_high: float = 0.9
    response_rate: float = 0.4
    seed: int = 0

    def check(self) -> None:
        """Raise ``input.malformed`` unless the parameters describe a cohort that can exist."""
        if not 1 <= self.n_informative <= self.n_genes <= 100_000:
            raise InputError("input.malformed", "need 1 <= n_informative <= n_genes <= 100000")
        if len(self.hospitals) != len(self.hospital_shares) or not self.hospitals:
            raise InputError("input.malformed", "one share per hospital")
        if any(s <= 0 for s in self.hospital_shares) or not math.isclose(sum(self.hospital_shares), 1.0):
            raise InputError("input.malformed", "hospital shares must be positive and sum to 1")
        if self.n_patients < 4 * len(self.hospitals):
            raise InputError("input.malformed", "at least 4 patients per hospital")
        if not 0 < self.response_rate < 1:
            raise InputError("input.malformed", "response_rate must be in (0, 1)")
        if not 0 <= self.module_loading_low <= self.module_loading_high < 1:
            raise InputError("input.malformed", "module loadings must satisfy 0 <= low <= high < 1")
        if min(self.baseline_log_sd, self.expression_log_sd, self.batch_log_sd, self.hospital_scale_sd) < 0:
            raise InputError("input.malformed", "standard deviations must be non-negative")


@dataclass(frozen=True)
class HospitalCohort:
    """One hospital's patients: expression matrix (patients x genes) and therapy response."""

    name: str
    genes: tuple[str, ...]
    expression: np.ndarray
    response: np.ndarray

    def to_table(self) -> pa.Table:
        """Return the hospital's data as an Arrow table: gene columns then ``response``."""
        columns = {gene: pa.array(self.expression[:, j]) for j, gene in enumerate(self.genes)}
        columns[LABEL] = pa.array(self.response.astype(np.int64))
        return pa.table(columns)


@dataclass(frozen=True)
class Cohort:
    """A generated cohort with its ground truth: which genes carry the pathway, with what loading."""

    parameters: CohortParameters
    hospitals: tuple[HospitalCohort, ...]
    informative_genes: tuple[str, ...]
    loadings: dict[str, float] = field(default_factory=dict)


def gene_names(n_genes: int) -> tuple[str, ...]:
    """Return ``G0001``.. zero-padded to a common width."""
    width = max(4, len(str(n_genes)))
    return tuple(f"G{i:0{width}d}" for i in range(1, n_genes + 1))


def generate_cohort(parameters: CohortParameters | None = None) -> Cohort:
    """Generate the cohort described in this module's docstring.

    Guarantees: deterministic for given parameters; every hospital has the same columns; every
    expression value is positive and finite (float32).
    """
    p = parameters or CohortParameters()
    p.check()
    rng = np.random.default_rng(p.seed)
    genes = gene_names(p.n_genes)
    mu = rng.normal(p.baseline_log_mean, p.baseline_log_sd, size=p.n_genes)
    sigma = p.expression_log_sd * rng.uniform(0.6, 1.4, size=p.n_genes)
    informative = np.sort(rng.choice(p.n_genes, size=p.n_informative, replace=False))
    loadings = rng.uniform(p.module_loading_low, p.module_loading_high, size=p.n_informative) * rng.choice(
        [-1.0, 1.0], size=p.n_informative
    )

    sizes = np.floor(np.array(p.hospital_shares) * p.n_patients).astype(int)
    sizes[0] += p.n_patients - int(sizes.sum())
    site = rng.permutation(np.repeat(np.arange(len(p.hospitals)), sizes))
    shift = rng.normal(0.0, p.hospital_scale_sd, size=len(p.hospitals))
    batch = rng.normal(0.0, p.batch_log_sd, size=(len(p.hospitals), p.n_genes))

    activity = rng.normal(size=p.n_patients)
    z = rng.normal(size=(p.n_patients, p.n_genes))
    z[:, informative] = activity[:, None] * loadings + np.sqrt(1.0 - loadings**2) * z[:, informative]
    log_expression = mu + sigma * z + batch[site] + shift[site][:, None]
    expression = np.exp(log_expression).astype(np.float32)
    logit = math.log(p.response_rate / (1 - p.response_rate)) + p.effect_scale * activity
    response = (rng.random(p.n_patients) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)

    hospitals = tuple(
        HospitalCohort(
            name=name,
            genes=genes,
            expression=np.ascontiguousarray(expression[site == h]),
            response=response[site == h],
        )
        for h, name in enumerate(p.hospitals)
    )
    return Cohort(
        parameters=p,
        hospitals=hospitals,
        informative_genes=tuple(genes[i] for i in informative),
        loadings={genes[i]: float(w) for i, w in zip(informative, loadings, strict=True)},
    )


__all__ = ["LABEL", "Cohort", "CohortParameters", "HospitalCohort", "gene_names", "generate_cohort"]
