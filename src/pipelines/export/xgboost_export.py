"""xgboost.spark classifiers → ONNX: onnxmltools parses the booster, we fix the arithmetic's order.

XGBoost casts every feature to float32, compares it with float32 thresholds, and adds the trees'
float32 leaves one by one onto its base margin, in tree order. onnxmltools' TreeEnsembleClassifier
adds the base last, and ONNX Runtime splits the trees among its threads, so its float32 sum lands
a few ulps away (1e-6 in probability at 300 trees, enough to fail register's parity at 2.9M rows).
So the trees are re-emitted as one regressor target each, the base as a leading one-leaf tree,
and CumSum adds the [n, trees] leaves left to right: XGBoost's margin bit for bit, for any thread
count. The sigmoid follows XGBoost's float32 steps; its exp alone runs in double (within an ulp).
"""

from __future__ import annotations

from typing import Any

import onnx
from onnx import TensorProto, helper

from src.core.bundle import ONNX_INPUT, ONNX_PROBABILITY_OUTPUT
from src.pipelines.export.graph import ONNX_OPSET
from src.utils.errors import PermanentError

_ENSEMBLE = "TreeEnsembleClassifier"
_ML_DOMAIN = "ai.onnx.ml"
# The leading tree: one leaf (node 0) holding the base margin. Its values for every per-node
# attribute onnxmltools 1.16 writes; an attribute not listed here fails the export loudly.
_BASE_LEAF: dict[str, Any] = {
    "nodes_nodeids": 0,
    "nodes_featureids": 0,
    "nodes_values": 0.0,
    "nodes_modes": b"LEAF",
    "nodes_truenodeids": 0,
    "nodes_falsenodeids": 0,
    "nodes_missing_value_tracks_true": 0,
    "nodes_hitrates": 1.0,
}


def is_xgboost(classifier: Any) -> bool:
    """True for a fitted xgboost.spark classifier."""
    from xgboost.spark import SparkXGBClassifierModel

    return isinstance(classifier, SparkXGBClassifierModel)


def xgboost_model(classifier: Any, n_features: int, name: str) -> onnx.ModelProto:
    """A SparkXGBClassifierModel's booster as ONNX: `features` double → `probability` double."""
    return booster_model(classifier.get_booster(), n_features, name)


def booster_model(booster: Any, n_features: int, name: str) -> onnx.ModelProto:
    """A binary:logistic booster as ONNX computing XGBoost's float32 margin exactly."""
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    if booster.num_features() != n_features:
        raise PermanentError(
            f"{name}: booster has {booster.num_features()} features, the spec {n_features}"
        )
    converted = onnxmltools.convert_xgboost(
        booster, name, [("features_float32", FloatTensorType([None, n_features]))]
    )
    ensembles = [n for n in converted.graph.node if n.op_type == _ENSEMBLE]
    if len(ensembles) != 1:
        raise PermanentError(f"{name}: onnxmltools' XGBoost graph has no single {_ENSEMBLE}")
    per_tree, n_targets = _per_tree_regressor(ensembles[0], name)
    model = _margin_graph(per_tree, n_targets, n_features, name)
    model.producer_name = converted.producer_name
    model.producer_version = converted.producer_version
    onnx.checker.check_model(model, full_check=True)
    return model


def _per_tree_regressor(ensemble: onnx.NodeProto, name: str) -> tuple[dict[str, Any], int]:
    """The classifier's attributes as a regressor with one target per tree, base margin first."""
    attrs = {a.name: helper.get_attribute_value(a) for a in ensemble.attribute}
    post = attrs.get("post_transform", b"NONE")
    base = list(attrs.get("base_values", [0.0]))
    classes = sorted(set(attrs["class_ids"]))
    if post != b"LOGISTIC" or len(base) != 1 or classes != [0]:
        raise PermanentError(
            f"{name}: expected a binary:logistic booster (one margin, LOGISTIC), got "
            f"post_transform={post!r}, base_values={base}, classes={classes}"
        )
    regressor: dict[str, Any] = {"aggregate_function": "SUM", "post_transform": "NONE"}
    for key, values in attrs.items():
        if not key.startswith("nodes_"):
            continue
        if key == "nodes_treeids":
            regressor[key] = [0, *(t + 1 for t in values)]
        elif key in _BASE_LEAF:
            regressor[key] = [_BASE_LEAF[key], *values]
        else:
            raise PermanentError(f"{name}: onnxmltools wrote an unknown tree attribute {key}")
    trees = [t + 1 for t in attrs["class_treeids"]]
    regressor["target_treeids"] = [0, *trees]
    regressor["target_nodeids"] = [0, *attrs["class_nodeids"]]
    regressor["target_ids"] = [0, *trees]  # tree t's leaf is column t: nothing is summed yet
    regressor["target_weights"] = [base[0], *attrs["class_weights"]]
    n_targets = max(trees, default=0) + 1
    regressor["n_targets"] = n_targets
    return regressor, n_targets


def _margin_graph(
    regressor: dict[str, Any], n_targets: int, n_features: int, name: str
) -> onnx.ModelProto:
    """features double → float32 → leaves [n, trees] → left-to-right sum → XGBoost's sigmoid."""
    ints = TensorProto.INT64
    initializers = [
        helper.make_tensor("axis_1", ints, [1], [1]),
        helper.make_tensor("last_start", ints, [1], [n_targets - 1]),
        helper.make_tensor("last_end", ints, [1], [n_targets]),
        helper.make_tensor("one_float", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("one_double", TensorProto.DOUBLE, [], [1.0]),
    ]
    nodes = [
        helper.make_node("Cast", [ONNX_INPUT], ["features_float32"], to=TensorProto.FLOAT),
        helper.make_node(
            "TreeEnsembleRegressor",
            ["features_float32"],
            ["leaves"],
            domain=_ML_DOMAIN,
            **regressor,
        ),
        # ONNX Runtime's CumSum runs left to right: column t holds base + leaf_1 + … + leaf_t.
        helper.make_node("CumSum", ["leaves", "axis_1"], ["running_margin"]),
        helper.make_node(
            "Slice", ["running_margin", "last_start", "last_end", "axis_1"], ["margin"]
        ),
        # XGBoost: p = 1 / (1 + expf(-margin)) in float32.
        helper.make_node("Neg", ["margin"], ["neg_margin"]),
        helper.make_node("Cast", ["neg_margin"], ["neg_margin_double"], to=TensorProto.DOUBLE),
        helper.make_node("Exp", ["neg_margin_double"], ["exp_double"]),
        helper.make_node("Cast", ["exp_double"], ["exp_float"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["exp_float", "one_float"], ["denominator"]),
        helper.make_node("Reciprocal", ["denominator"], ["p1_float"]),
        helper.make_node("Cast", ["p1_float"], ["p1"], to=TensorProto.DOUBLE),
        helper.make_node("Sub", ["one_double", "p1"], ["p0"]),
        helper.make_node("Concat", ["p0", "p1"], [ONNX_PROBABILITY_OUTPUT], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(ONNX_INPUT, TensorProto.DOUBLE, [None, n_features])],
        [helper.make_tensor_value_info(ONNX_PROBABILITY_OUTPUT, TensorProto.DOUBLE, [None, 2])],
        initializer=initializers,
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(_ML_DOMAIN, 3)],
    )
