"""Request and response models of the API: one loan application in, one scored decision out.

The request model is built from `params.yaml` (`prep.numeric`, `prep.categorical`, `prep.dates`), so
the API accepts exactly the origination columns the pipeline trains on, under their LendingClub
names and in the raw formats of the LendingClub files. Everything else is refused with a reason.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from src.core.loan import (
    GRADES,
    SUB_GRADE,
    ParsedApplication,
    ParseError,
    check_text,
    current_month,
    derive,
    parse_category,
    parse_emp_length,
    parse_month,
    parse_number,
)
from src.utils.config import PrepConfig

# Domain facts, not tunables: the FICO scale, LendingClub's two terms, a percentage.
FICO_RANGE = (300.0, 850.0)
TERMS_MONTHS = (36.0, 60.0)
PERCENT_RANGE = (0.0, 100.0)
# Longest category text accepted: LendingClub's longest level is a few dozen characters.
MAX_CATEGORY_CHARS = 200
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

FIELD_DOCS: dict[str, str] = {
    "loan_amnt": "amount applied for, USD (> 0)",
    "term": "36 or 60 months; `36` or LendingClub's `\" 36 months\"`",
    "int_rate": "interest rate, percent (0–100); `13.49` or `\"13.49%\"`",
    "installment": "monthly payment, USD",
    "annual_inc": "self-reported annual income, USD (≥ 0)",
    "dti": "debt-to-income ratio, percent",
    "delinq_2yrs": "30+ days delinquencies in the past 2 years",
    "inq_last_6mths": "credit inquiries in the past 6 months",
    "open_acc": "open credit lines",
    "pub_rec": "derogatory public records",
    "revol_bal": "revolving balance, USD",
    "revol_util": "revolving line utilization, percent; `29.7` or `\"29.7%\"`",
    "total_acc": "credit lines ever",
    "fico_range_low": "FICO range, low end (300–850)",
    "fico_range_high": "FICO range, high end (300–850)",
    "emp_length": "employment length: `\"10+ years\"`, `\"< 1 year\"`, `\"3 years\"`, `\"n/a\"`",
    "pub_rec_bankruptcies": "public record bankruptcies",
    "mths_since_last_delinq": "months since the last delinquency (absent: never)",
    "grade": "LendingClub grade A–G",
    "sub_grade": "LendingClub sub-grade A1–G5, within `grade`",
    "home_ownership": "RENT, MORTGAGE, OWN, OTHER, …",
    "verification_status": "Verified, Source Verified, Not Verified",
    "purpose": "loan purpose, e.g. debt_consolidation",
    "addr_state": "two-letter US state",
    "earliest_cr_line": "month of the first credit line, `\"Dec-1999\"`",
    "issue_d": "month the loan is issued, `\"Dec-2011\"`; default: the current month",
}
# Counts and amounts that cannot be negative.
NON_NEGATIVE = frozenset(
    {
        "installment", "annual_inc", "delinq_2yrs", "inq_last_6mths", "open_acc", "pub_rec",
        "revol_bal", "revol_util", "total_acc", "pub_rec_bankruptcies", "mths_since_last_delinq",
    }
)


def _parsing(parse: Callable[[object], Any]) -> Callable[[object], Any]:
    def validate(value: object) -> Any:
        try:
            return parse(value)
        except ParseError as exc:
            raise PydanticCustomError("unparseable", str(exc)) from None

    return validate


def parse_id(value: object) -> object:
    """An integer id (as in LendingClub files) as text; text checked to be valid Unicode."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return check_text(value) if isinstance(value, str) else value


def _impossible(message: str, value: object) -> PydanticCustomError:
    return PydanticCustomError("impossible_value", message + ", got {value}", {"value": value})


def _check(name: str) -> Callable[[Any], Any]:
    """The plausibility rule of field `name` (None passes: a missing value is imputed)."""

    def check(value: Any) -> Any:
        if value is None:
            return value
        if name == "loan_amnt" and not value > 0:
            raise _impossible("must be positive", value)
        if name == "term" and value not in TERMS_MONTHS:
            raise _impossible("must be 36 or 60 months", value)
        if name == "int_rate" and not PERCENT_RANGE[0] <= value <= PERCENT_RANGE[1]:
            raise _impossible("must be a percentage between 0 and 100", value)
        if name.startswith("fico_range") and not FICO_RANGE[0] <= value <= FICO_RANGE[1]:
            raise _impossible("must be on the FICO scale, 300 to 850", value)
        if name in NON_NEGATIVE and value < 0:
            raise _impossible("cannot be negative", value)
        if name == "grade" and (len(value) != 1 or value not in GRADES):
            raise _impossible("is not a LendingClub grade (A–G)", value)
        if name == "sub_grade" and not SUB_GRADE.match(value):
            raise _impossible("is not a LendingClub sub-grade (A1–G5)", value)
        if isinstance(value, str) and len(value) > MAX_CATEGORY_CHARS:
            raise _impossible(f"is longer than {MAX_CATEGORY_CHARS} characters", value[:20] + "…")
        return value

    return check


_NUMBER_SCHEMA = {"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "null"}]}
_TEXT_SCHEMA = {"anyOf": [{"type": "string"}, {"type": "null"}]}


def _field_type(name: str, kind: Literal["numeric", "categorical", "date"]) -> Any:
    if kind == "date":
        return Annotated[
            date | None, BeforeValidator(_parsing(parse_month)), WithJsonSchema(_TEXT_SCHEMA)
        ]
    if kind == "categorical":
        return Annotated[
            str | None,
            BeforeValidator(_parsing(parse_category)),
            AfterValidator(_check(name)),
            WithJsonSchema(_TEXT_SCHEMA),
        ]
    parse = parse_emp_length if name == "emp_length" else parse_number
    return Annotated[
        float | None,
        BeforeValidator(_parsing(parse)),
        AfterValidator(_check(name)),
        WithJsonSchema(_NUMBER_SCHEMA),
    ]


class ApplicationBase(BaseModel):
    """Fields and checks common to every application model; the rest comes from params.yaml."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra={"examples": [EXAMPLE_APPLICATION]}
    )

    id: Annotated[str | None, BeforeValidator(_parsing(parse_id))] = Field(
        default=None, description="your reference; echoed in the response", max_length=64
    )

    @model_validator(mode="after")
    def _consistent(self) -> ApplicationBase:
        values = self.__dict__  # the validated fields, without model_dump's copy
        grade, sub_grade = values.get("grade"), values.get("sub_grade")
        if grade and sub_grade and sub_grade[0] != grade:
            raise PydanticCustomError(
                "inconsistent_fields",
                "sub_grade {sub_grade} is not within grade {grade}",
                {"field": "sub_grade", "sub_grade": sub_grade, "grade": grade},
            )
        low, high = values.get("fico_range_low"), values.get("fico_range_high")
        if low is not None and high is not None and low > high:
            raise PydanticCustomError(
                "inconsistent_fields",
                "fico_range_low {low} is above fico_range_high {high}",
                {"field": "fico_range_low", "low": low, "high": high},
            )
        earliest, issued = values.get("earliest_cr_line"), values.get("issue_d") or current_month()
        if earliest is not None and earliest > issued:
            raise PydanticCustomError(
                "inconsistent_fields",
                "earliest_cr_line {earliest} is after the issue month {issued}",
                {"field": "earliest_cr_line", "earliest": str(earliest), "issued": str(issued)},
            )
        return self


def application_model(prep: PrepConfig) -> type[ApplicationBase]:
    """The request model of one application: the allowlisted origination fields of `prep`."""
    kinds: dict[str, Literal["numeric", "categorical", "date"]] = {
        **{n: "numeric" for n in prep.numeric},
        **{n: "categorical" for n in prep.categorical},
        **{n: "date" for n in [*prep.dates, "issue_d"]},
    }
    # issue_d is required in the files but defaults to today for a new application.
    required = set(prep.required) - {"issue_d"}
    fields: dict[str, Any] = {
        name: (
            _field_type(name, kind),
            Field(... if name in required else None, description=FIELD_DOCS.get(name, name)),
        )
        for name, kind in kinds.items()
    }
    return create_model(  # type: ignore[call-overload, no-any-return]
        "LoanApplication",
        __base__=ApplicationBase,
        __doc__="One loan application, in the raw formats of a LendingClub file.",
        **fields,
    )


def to_parsed(application: ApplicationBase, derived: list[str]) -> ParsedApplication:
    """Parsed values plus the derived features, ready for the feature spec and segmentation."""
    values: dict[str, object] = application.model_dump(exclude={"id"})
    values["issue_d"] = values.get("issue_d") or current_month()
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
