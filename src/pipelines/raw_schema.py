"""The raw LendingClub layout (Kaggle `accepted_2007_to_2018Q4`) and which of its columns leak the label."""

from __future__ import annotations

import re

# Column order of the Kaggle file; the real sample and the synthetic generator use it too.
RAW_COLUMNS: tuple[str, ...] = (
    "id", "member_id", "loan_amnt", "funded_amnt", "funded_amnt_inv", "term", "int_rate",
    "installment", "grade", "sub_grade", "emp_title", "emp_length", "home_ownership", "annual_inc",
    "verification_status", "issue_d", "loan_status", "pymnt_plan", "url", "desc", "purpose",
    "title", "zip_code", "addr_state", "dti", "delinq_2yrs", "earliest_cr_line", "fico_range_low",
    "fico_range_high", "inq_last_6mths", "mths_since_last_delinq", "mths_since_last_record",
    "open_acc", "pub_rec", "revol_bal", "revol_util", "total_acc", "initial_list_status",
    "out_prncp", "out_prncp_inv", "total_pymnt", "total_pymnt_inv", "total_rec_prncp",
    "total_rec_int", "total_rec_late_fee", "recoveries", "collection_recovery_fee", "last_pymnt_d",
    "last_pymnt_amnt", "next_pymnt_d", "last_credit_pull_d", "last_fico_range_high",
    "last_fico_range_low", "collections_12_mths_ex_med", "mths_since_last_major_derog",
    "policy_code", "application_type", "annual_inc_joint", "dti_joint",
    "verification_status_joint", "acc_now_delinq", "tot_coll_amt", "tot_cur_bal", "open_acc_6m",
    "open_act_il", "open_il_12m", "open_il_24m", "mths_since_rcnt_il", "total_bal_il", "il_util",
    "open_rv_12m", "open_rv_24m", "max_bal_bc", "all_util", "total_rev_hi_lim", "inq_fi",
    "total_cu_tl", "inq_last_12m", "acc_open_past_24mths", "avg_cur_bal", "bc_open_to_buy",
    "bc_util", "chargeoff_within_12_mths", "delinq_amnt", "mo_sin_old_il_acct",
    "mo_sin_old_rev_tl_op", "mo_sin_rcnt_rev_tl_op", "mo_sin_rcnt_tl", "mort_acc",
    "mths_since_recent_bc", "mths_since_recent_bc_dlq", "mths_since_recent_inq",
    "mths_since_recent_revol_delinq", "num_accts_ever_120_pd", "num_actv_bc_tl", "num_actv_rev_tl",
    "num_bc_sats", "num_bc_tl", "num_il_tl", "num_op_rev_tl", "num_rev_accts",
    "num_rev_tl_bal_gt_0", "num_sats", "num_tl_120dpd_2m", "num_tl_30dpd", "num_tl_90g_dpd_24m",
    "num_tl_op_past_12m", "pct_tl_nvr_dlq", "percent_bc_gt_75", "pub_rec_bankruptcies",
    "tax_liens", "tot_hi_cred_lim", "total_bal_ex_mort", "total_bc_limit",
    "total_il_high_credit_limit", "revol_bal_joint", "sec_app_fico_range_low",
    "sec_app_fico_range_high", "sec_app_earliest_cr_line", "sec_app_inq_last_6mths",
    "sec_app_mort_acc", "sec_app_open_acc", "sec_app_revol_util", "sec_app_open_act_il",
    "sec_app_num_rev_accts", "sec_app_chargeoff_within_12_mths",
    "sec_app_collections_12_mths_ex_med", "sec_app_mths_since_last_major_derog", "hardship_flag",
    "hardship_type", "hardship_reason", "hardship_status", "deferral_term", "hardship_amount",
    "hardship_start_date", "hardship_end_date", "payment_plan_start_date", "hardship_length",
    "hardship_dpd", "hardship_loan_status", "orig_projected_additional_accrued_interest",
    "hardship_payoff_balance_amount", "hardship_last_payment_amount", "disbursement_method",
    "debt_settlement_flag", "debt_settlement_flag_date", "settlement_status", "settlement_date",
    "settlement_amount", "settlement_percentage", "settlement_term",
)

# Filled after the loan was issued: they encode the outcome (see shared/data/README.md).
LEAKY_PATTERNS: tuple[str, ...] = (
    r"out_prncp.*",
    r"total_pymnt.*",
    r"total_rec_.*",
    r"recoveries",
    r"collection_recovery_fee",
    r"last_.*",
    r"next_pymnt_d",
    r"hardship_.*",
    r"deferral_term",
    r"payment_plan_start_date",
    r"orig_projected_additional_accrued_interest",
    r"debt_settlement_.*",
    r"settlement_.*",
    r"pymnt_plan",
    r"loan_status",
)
_LEAKY_RE = re.compile("|".join(f"(?:{p})" for p in LEAKY_PATTERNS))

LABEL_COLUMN = "default"
KEY_COLUMN = "loan_key"

DEFAULT_STATUSES: frozenset[str] = frozenset(
    {"Charged Off", "Default", "Does not meet the credit policy. Status:Charged Off"}
)
PAID_STATUSES: frozenset[str] = frozenset(
    {"Fully Paid", "Does not meet the credit policy. Status:Fully Paid"}
)
UNRESOLVED_STATUSES: frozenset[str] = frozenset(
    {"Current", "In Grace Period", "Late (16-30 days)", "Late (31-120 days)", "Issued"}
)


def is_leaky(column: str) -> bool:
    """True when `column` is filled after issue and so reveals the outcome."""
    return _LEAKY_RE.fullmatch(column) is not None


def leaky_columns() -> list[str]:
    """Raw columns that must never become features."""
    return [c for c in RAW_COLUMNS if is_leaky(c)]
