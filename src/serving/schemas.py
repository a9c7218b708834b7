"""Request and response models of the API: one loan application in, one scored decision out.

The request model is built from `params.yaml` (`prep.numeric`, `prep.categorical`, `prep.dates`), so
the API accepts exactly the origination columns the pipeline trains on, under their LendingClub
names and in the raw formats of the LendingClub files, judged by the loan table of
`src/core/loan.py` as prep and batch scoring judge a file. Everything else is refused with a reason.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    create_model,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from src.core.loan import (
    ISSUE_COLUMN,
    LOAN_COLUMNS,
    LoanColumn,
    ParsedApplication,
    ValueRefusedError,
    check_text,
    cross_problems,
    current_month,
    derive,
    judge_value,
)
from src.utils.config import PrepConfig

LEAKY_MESSAGE = "filled after the loan is issued; not allowed as input"

# A real application, copied from the LendingClub 2007–2011 sample (FICO is empty in that file).
EXAMPLE_APPLICATION: dict[str, Any] = {
    "loan_amnt": 20000,
    "term": " 36 months",
    "int_rate": 17.27,
    "installment": 715.75,
    "annual_inc": 50000.0,
    "dti": 3.02,
    "delinq_2yrs": 2,
    "inq_last_6mths": 0,
    "open_acc": 3,
    "pub_rec": 0,
    "revol_bal": 4245,
    "revol_util": 38.2,
    "total_acc": 11,
    "emp_length": "10+ years",
    "pub_rec_bankruptcies": 0,
    "mths_since_last_delinq": 17,
    "grade": "D",
    "sub_grade": "D3",
    "home_ownership": "MORTGAGE",
    "verification_status": "Source Verified",
    "purpose": "debt_consolidation",
    "addr_state": "CA",
    "earliest_cr_line": "Sep-1993",
    "issue_d": "Dec-2011",
}


def _refused(exc: ValueRefusedError) -> PydanticCustomError:
    # "{reason}": the message is passed as context, so braces in the quoted raw text stay text.
    return PydanticCustomError(exc.code, "{reason}", {"reason": exc.message})


def parse_id(value: object) -> object:
    """An integer id (as in LendingClub files) as text; text checked to be valid Unicode."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        try:
            return check_text(value)
        except ValueRefusedError as exc:
            raise _refused(exc) from None
    return value


def _validator(column: LoanColumn, required: bool) -> Callable[[object], Any]:
    """loan.judge_value of one field; a blank issue month is the current month (a new loan)."""

    def validate(value: object) -> Any:
        try:
            parsed = judge_value(column, value, required)
        except ValueRefusedError as exc:
            raise _refused(exc) from None
        if parsed is None and column.name == ISSUE_COLUMN:
            return current_month()
        return parsed

    return validate


_NUMBER_SCHEMA = {"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "null"}]}
_TEXT_SCHEMA = {"anyOf": [{"type": "string"}, {"type": "null"}]}
_PY_TYPES: dict[str, Any] = {"numeric": float, "categorical": str, "dates": date}


def _field_type(column: LoanColumn, required: bool) -> Any:
    schema = _NUMBER_SCHEMA if column.kind in ("number", "percent", "term") else _TEXT_SCHEMA
    return Annotated[
        _PY_TYPES[column.group] | None,
        BeforeValidator(_validator(column, required)),
        WithJsonSchema(schema),
    ]


class ApplicationBase(BaseModel):
    """Fields and checks common to every application model; the rest comes from params.yaml."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra={"examples": [EXAMPLE_APPLICATION]}
    )

    id: Annotated[str | None, BeforeValidator(parse_id)] = Field(
        default=None, description="your reference; echoed in the response", max_length=64
    )

    @model_validator(mode="after")
    def _consistent(self) -> ApplicationBase:
        # Runs only when every field is valid, as loan.judge checks the cross-field rules.
        problems = cross_problems(self.__dict__)  # the validated fields, without a copy
        if problems:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError(
                            "inconsistent_fields", "{reason}", {"field": name, "reason": message}
                        ),
                        loc=(name,),
                        input=self.__dict__.get(name),
                    )
                    for name, message in problems
                ],
            )
        return self


def application_model(prep: PrepConfig) -> type[ApplicationBase]:
    """The request model of one application: the allowlisted origination fields of `prep`.

    Every field is judged by the loan table of `src/core/loan.py`, as prep and batch scoring
    judge a row of a file. issue_d, required in a file, defaults to the current month here.
    """
    required = set(prep.required) - {ISSUE_COLUMN}
    fields: dict[str, Any] = {}
    for name in prep.application_columns:
        column = LOAN_COLUMNS[name]
        default: Any = ... if name in required else None
        fields[name] = (
            _field_type(column, name in required),
            Field(default, description=column.doc, validate_default=name == ISSUE_COLUMN),
        )
    return create_model(  # type: ignore[call-overload, no-any-return]
        "LoanApplication",
        __base__=ApplicationBase,
        __doc__="One loan application, in the raw formats of a LendingClub file.",
        **fields,
    )


def to_parsed(application: ApplicationBase, derived: list[str]) -> ParsedApplication:
    """Parsed values plus the derived features, ready for the feature spec and segmentation."""
    values: dict[str, object] = application.model_dump(exclude={"id"})
    values.update(derive(values, derived))
    return ParsedApplication(id=application.id, values=values)


# --- responses -----------------------------------------------------------------------------------


class Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class ModelRef(Out):
    name: str = Field(description="registered model name")
    version: str = Field(description="registered model version")


class Factor(Out):
    """How much one feature moved this application's probability of default."""

    feature: str = Field(description="model input (a LendingClub field or a derived feature)")
    value: float | str | None = Field(description="the application's value (None: missing)")
    reference: float | str | None = Field(
        description="what it was replaced by: the training median (numeric) or no level (text)"
    )
    effect: float = Field(
        description="probability of default minus the probability with the reference value"
    )
    direction: Literal["raises_risk", "lowers_risk"]


SCORE_DOC = (
    "scorecard points of the calibrated probability, higher is safer: base_points + pdo / ln 2 · "
    "ln(odds / base_odds) with odds = (1 − p) / p good:bad (params `scorecard`; by default 600 "
    "points at 50:1 odds, 20 points to double the odds), rounded to 0.01"
)


class Prediction(Out):
    id: str | None = None
    probability_of_default: float = Field(
        ge=0, le=1,
        description="calibrated probability that the loan defaults (the classifier's output "
                    "through the model's calibration table)",
    )
    score: float = Field(description=SCORE_DOC)
    decision: Literal["approve", "decline"] = Field(
        description="decline when the probability is at or above the registered threshold"
    )
    threshold: float
    risk_segment: str = Field(description="risk band of the applicant's segment")
    model: ModelRef
    top_factors: list[Factor] = Field(
        description="largest occlusion effects, strongest first (see the API description)"
    )


class BatchPrediction(Out):
    predictions: list[Prediction]


class ThresholdInfo(Out):
    value: float = Field(description="probability of default at or above which a loan is declined")
    rule: str = Field(description="how it was chosen (profit, f1, youden)")
    chosen_on: str = Field(description="the data it was chosen on")


class ModelInfo(Out):
    registered_model: str
    version: str
    alias: str | None = Field(description="registry alias it was loaded through, if any")
    source: str = Field(description="model URI or bundle folder it was loaded from")
    source_model: str | None
    backend: Literal["onnx", "spark"]
    metrics: dict[str, Any] = Field(
        description="evaluation of the model: top-level figures on the test split (reported only), "
                    "`validation` on the validation slice it was selected on"
    )
    threshold: ThresholdInfo
    features: list[str] = Field(description="the model's input vector, in order")
    trained_at: str | None
    training_run_id: str
    loaded_at: str


class Health(Out):
    status: Literal["ok"]


class Ready(Out):
    ready: bool
    version: str | None = None
    detail: str | None = None


class ReloadResult(Out):
    reloaded: bool
    version: str | None
    detail: str
