"""The typed config: origination-only allowlist, clear errors that name the field."""

from __future__ import annotations

import pytest

from src.core.raw_schema import RAW_COLUMNS, is_leaky, leaky_columns
from src.utils.config import load_config
from src.utils.errors import ConfigError
from tests.conftest import REPO, write_params


def test_repo_params_load() -> None:
    cfg = load_config(REPO / "params.yaml")
    assert cfg.root == REPO
    assert not any(is_leaky(c) for c in cfg.prep.numeric + cfg.prep.categorical + cfg.prep.dates)


@pytest.mark.parametrize(
    "column", ["total_rec_prncp", "recoveries", "last_pymnt_amnt", "out_prncp"]
)
def test_leaky_column_in_allowlist_is_a_config_error(tmp_path, column: str) -> None:
    base = load_config(REPO / "params.yaml").prep.numeric
    path = write_params(tmp_path, {"prep": {"numeric": [*base, column]}})
    with pytest.raises(ConfigError, match=rf"'{column}' is filled after the loan is issued"):
        load_config(path)


def test_unknown_column_and_bad_value_are_named(tmp_path) -> None:
    path = write_params(tmp_path, {"prep": {"categorical": ["grade", "favourite_colour"]}})
    with pytest.raises(ConfigError, match="'favourite_colour' is not a LendingClub raw column"):
        load_config(path)
    path = write_params(tmp_path, {"split": {"test_fraction": 1.5}})
    with pytest.raises(ConfigError, match=r"split\.test_fraction"):
        load_config(path)
    path = write_params(tmp_path, {"segment": {"k_range": [3, 6], "fit_rows": 5}})
    with pytest.raises(ConfigError, match=r"segment\.fit_rows: 5 loans cannot make 6 clusters"):
        load_config(path)


def test_derived_feature_needs_its_inputs(tmp_path) -> None:
    base = load_config(REPO / "params.yaml").prep.numeric
    numeric = [c for c in base if c not in ("fico_range_low", "fico_range_high")]
    path = write_params(tmp_path, {"prep": {"numeric": numeric}})
    with pytest.raises(ConfigError, match="fico_mid"):
        load_config(path)


def test_leak_list_covers_the_readme_families() -> None:
    leaky = set(leaky_columns())
    for name in (
        "out_prncp_inv",
        "total_pymnt_inv",
        "total_rec_int",
        "collection_recovery_fee",
        "next_pymnt_d",
        "last_credit_pull_d",
        "last_fico_range_high",
        "hardship_flag",
        "deferral_term",
        "debt_settlement_flag",
        "settlement_amount",
        "pymnt_plan",
    ):
        assert name in leaky
    for name in ("loan_amnt", "int_rate", "annual_inc", "dti", "fico_range_low", "issue_d"):
        assert name in RAW_COLUMNS and name not in leaky


@pytest.mark.parametrize(
    ("rows", "partitions"), [(0, 2), (4_000, 2), (250_000, 3), (500_000, 5), (2_300_000, 8)]
)
def test_training_tables_are_partitioned_by_rows_not_by_machine(rows: int, partitions: int) -> None:
    from src.utils.spark import table_partitions

    spark = load_config(REPO / "params.yaml").spark
    assert (spark.partition_rows, spark.shuffle_partitions) == (100_000, 8)
    assert table_partitions(spark, rows) == partitions
