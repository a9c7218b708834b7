"""Split: same rows on every rerun and partitioning, exact stratification, the time option."""

from __future__ import annotations

import hashlib

from pyspark.sql import functions as F

from src.core.raw_schema import KEY_COLUMN, LABEL_COLUMN
from src.pipelines.preparation.splitting import split_by_time, split_stratified
from src.supervisor import load_result, run_stage


def key_digest(df) -> str:
    keys = sorted(r[KEY_COLUMN] for r in df.select(KEY_COLUMN).collect())
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def test_stratified_split_is_stable_and_exact(split_project, spark) -> None:
    result = load_result(split_project, "split")
    train = spark.read.parquet(str(split_project.path(result.train.path)))
    test = spark.read.parquet(str(split_project.path(result.test.path)))
    processed = spark.read.parquet(str(split_project.path(split_project.prep.processed_path)))

    assert train.count() + test.count() == processed.count()
    assert train.join(test, KEY_COLUMN).count() == 0
    # Exact per class: round(0.2 * n_class) of each label goes to test.
    for label, n in processed.groupBy(LABEL_COLUMN).count().collect():
        assert test.filter(F.col(LABEL_COLUMN) == label).count() == round(0.2 * n)
    assert abs(result.train_side.default_share - result.test_side.default_share) < 0.002

    # Another partitioning, as on another machine, picks the very same rows.
    before = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "3")
    try:
        again_train, again_test = split_stratified(
            processed.repartition(5), 0.2, split_project.seed
        )
        assert key_digest(again_test) == key_digest(test)
        assert key_digest(again_train) == key_digest(train)
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", before)
    # A different seed picks different rows.
    _, other_test = split_stratified(processed, 0.2, split_project.seed + 1)
    assert key_digest(other_test) != key_digest(test)


def test_rerunning_the_stage_rewrites_identical_sides(split_project) -> None:
    first = load_result(split_project, "split")
    again = run_stage(split_project, "split", run_id="rerun")
    assert (again.train.sha256, again.test.sha256) == (first.train.sha256, first.test.sha256)


def test_time_split_trains_on_the_past(split_project, spark) -> None:
    processed = spark.read.parquet(str(split_project.path(split_project.prep.processed_path)))
    train, test, cutoff = split_by_time(processed, 0.2)
    assert train.agg(F.max("issue_d")).first()[0] < cutoff
    assert test.agg(F.min("issue_d")).first()[0] == cutoff
    share = test.count() / processed.count()
    assert 0.2 <= share < 0.35
