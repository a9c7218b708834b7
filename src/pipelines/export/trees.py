"""Spark tree ensembles (RandomForest, GBT classifiers) → ONNX TreeEnsemble in float64.

The trees come from the model's own saved form (`write().save()`: the `data` parquet holds every
node with its split, prediction and impurity stats). Thresholds stay doubles and every split is
BRANCH_LEQ: Spark sends a row left when `value <= threshold`, and a NaN right (false branch).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
from onnx import helper, numpy_helper
from pyspark.ml.classification import GBTClassificationModel, RandomForestClassificationModel
from pyspark.sql import SparkSession

from src.core.bundle import ONNX_INPUT, ONNX_PROBABILITY_OUTPUT
from src.pipelines.export.graph import ML_DOMAIN, binary_head, classifier_model
from src.utils.errors import PermanentError

_BRANCH_LEQ = 0
_SUM = 1
_NO_TRANSFORM = 0
# Spark marks a leaf with child id -1 and a continuous split with numCategories -1.
_NONE = -1
# GBT's log loss: P(default) = 1 / (1 + exp(-2 · margin)).
_GBT_SCALE = 2.0


@dataclass(frozen=True)
class SparkNode:
    """One node of a saved Spark tree."""

    id: int
    feature: int
    threshold: float
    left: int
    right: int
    prediction: float
    stats: tuple[float, ...]

    @property
    def is_leaf(self) -> bool:
        return self.left == _NONE


Tree = dict[int, SparkNode]


def _node(tree_id: int, row: pd.Series) -> SparkNode:
    split = row["split"]
    left, right = int(row["leftChild"]), int(row["rightChild"])
    if left != _NONE and int(split["numCategories"]) != _NONE:
        raise PermanentError(
            f"tree {tree_id} node {row['id']}: categorical split; only continuous splits export "
            "(the pipeline's feature vector carries no categorical metadata)"
        )
    threshold = float(split["leftCategoriesOrThreshold"][0]) if left != _NONE else 0.0
    return SparkNode(
        id=int(row["id"]),
        feature=int(split["featureIndex"]),
        threshold=threshold,
        left=left,
        right=right,
        prediction=float(row["prediction"]),
        stats=tuple(float(s) for s in row["impurityStats"]),
    )


def read_trees(
    spark: SparkSession, model: RandomForestClassificationModel | GBTClassificationModel
) -> list[Tree]:
    """Every tree of the ensemble, in Spark's tree order, from one save of the model."""
    with tempfile.TemporaryDirectory(prefix="onnx-trees-") as folder:
        path = Path(folder) / "model"
        model.write().save(str(path))
        frame = spark.read.parquet(str(path / "data")).select("treeID", "nodeData.*").toPandas()
    trees: dict[int, Tree] = {}
    for _, row in frame.iterrows():
        tree_id = int(row["treeID"])
        node = _node(tree_id, row)
        trees.setdefault(tree_id, {})[node.id] = node
    if sorted(trees) != list(range(model.getNumTrees)):
        raise PermanentError(
            f"saved model has trees {sorted(trees)}, expected 0..{model.getNumTrees - 1}"
        )
    return [trees[i] for i in range(model.getNumTrees)]


def _root(tree: Tree) -> int:
    children = {c for n in tree.values() if not n.is_leaf for c in (n.left, n.right)}
    roots = [i for i in tree if i not in children]
    if len(roots) != 1:
        raise PermanentError(f"a saved tree has {len(roots)} roots")
    return roots[0]


def tree_ensemble(
    trees: list[Tree], leaf_values: list[dict[int, float]], output: str
) -> onnx.NodeProto:
    """One TreeEnsemble (one target, summed over trees) with leaf value leaf_values[t][node id]."""
    roots: list[int] = []
    features: list[int] = []
    splits: list[float] = []
    true_ids: list[int] = []
    true_leafs: list[int] = []
    false_ids: list[int] = []
    false_leafs: list[int] = []
    weights: list[float] = []

    def child(
        node: SparkNode, interior: dict[int, int], values: dict[int, float]
    ) -> tuple[int, int]:
        """(index, is_leaf) of a branch target: a new leaf entry, or an interior node's index."""
        if node.is_leaf:
            weights.append(values[node.id])
            return len(weights) - 1, 1
        return interior[node.id], 0

    for tree, values in zip(trees, leaf_values, strict=True):
        root = tree[_root(tree)]
        if root.is_leaf:
            # A one-leaf tree: one split whose two branches reach the same leaf.
            roots.append(len(features))
            features.append(0)
            splits.append(0.0)
            leaf, _ = child(root, {}, values)
            true_ids.append(leaf)
            true_leafs.append(1)
            false_ids.append(leaf)
            false_leafs.append(1)
            continue
        order = [n for n in sorted(tree) if not tree[n].is_leaf]
        interior = {node_id: len(features) + i for i, node_id in enumerate(order)}
        roots.append(interior[root.id])
        for node_id in order:
            node = tree[node_id]
            features.append(node.feature)
            splits.append(node.threshold)
            left, left_is_leaf = child(tree[node.left], interior, values)
            right, right_is_leaf = child(tree[node.right], interior, values)
            true_ids.append(left)
            true_leafs.append(left_is_leaf)
            false_ids.append(right)
            false_leafs.append(right_is_leaf)
    n_nodes = len(features)
    return helper.make_node(
        "TreeEnsemble",
        [ONNX_INPUT],
        [output],
        domain=ML_DOMAIN,
        n_targets=1,
        aggregate_function=_SUM,
        post_transform=_NO_TRANSFORM,
        tree_roots=roots,
        nodes_featureids=features,
        nodes_splits=numpy_helper.from_array(np.asarray(splits, dtype=np.float64)),
        nodes_modes=numpy_helper.from_array(np.full(n_nodes, _BRANCH_LEQ, dtype=np.uint8)),
        nodes_truenodeids=true_ids,
        nodes_trueleafs=true_leafs,
        nodes_falsenodeids=false_ids,
        nodes_falseleafs=false_leafs,
        nodes_missing_value_tracks_true=[0] * n_nodes,
        leaf_targetids=[0] * len(weights),
        leaf_weights=numpy_helper.from_array(np.asarray(weights, dtype=np.float64)),
    )


def _class_share(node: SparkNode, label: int) -> float:
    # Spark skips a leaf without weight rather than divide by zero.
    total = sum(node.stats)
    return node.stats[label] / total if total != 0 else 0.0


def random_forest_model(
    spark: SparkSession, model: RandomForestClassificationModel, n_features: int, name: str
) -> onnx.ModelProto:
    """Spark's RF probability: the sum over trees of each leaf's class shares, normalized to 1."""
    if model.numClasses != 2:
        raise PermanentError(f"{name}: only binary forests export, got {model.numClasses} classes")
    trees = read_trees(spark, model)
    nodes = [
        tree_ensemble(
            trees,
            [{i: _class_share(n, label) for i, n in tree.items() if n.is_leaf} for tree in trees],
            f"raw_{label}",
        )
        for label in (0, 1)
    ]
    nodes += [
        helper.make_node("Concat", ["raw_0", "raw_1"], ["raw"], axis=1),
        helper.make_node("ReduceSum", ["raw", "sum_axis"], ["raw_total"], keepdims=1),
        helper.make_node("Div", ["raw", "raw_total"], [ONNX_PROBABILITY_OUTPUT]),
    ]
    axis = numpy_helper.from_array(np.asarray([1], dtype=np.int64), "sum_axis")
    return classifier_model(name, n_features, nodes, [axis])


def gbt_model(
    spark: SparkSession, model: GBTClassificationModel, n_features: int, name: str
) -> onnx.ModelProto:
    """Spark's GBT probability: margin = Σ treeWeight · leaf prediction, then the log-loss link."""
    trees = read_trees(spark, model)
    weights = list(model.treeWeights)
    ensemble = tree_ensemble(
        trees,
        [
            {i: weight * n.prediction for i, n in tree.items() if n.is_leaf}
            for tree, weight in zip(trees, weights, strict=True)
        ],
        "margin",
    )
    head, initializers = binary_head("margin", _GBT_SCALE, "gbt")
    return classifier_model(name, n_features, [ensemble, *head], initializers)
