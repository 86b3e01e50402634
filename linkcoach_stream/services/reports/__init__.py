"""The one-shot leadership report, one module per concern:

- `inputs`: the request resolved and keyed, with no I/O
- `knowledge`: the knowledge-base files a report is built from (via `rag.documents`)
- `schema`: the report models and the JSON schema sent to the model
- `prompt`: the prompts, next to `REPORT_PROMPT_VERSION`
- `offline`: the deterministic offline composer
- `cache`: the two-tier cache (Redis in front of Postgres)
- `singleflight`: one execution per key, within a process and across processes
- `service`: `ReportService`, which ties them together

Compatibility scores and assessment parsing are domain rules (`domain.compatibility`,
`domain.assessment_input`).
"""

from __future__ import annotations

from .cache import ReportResult
from .service import CLASSIFIER_FILENAME, FALLBACK_TTL_S, ReportService, load_classifier

__all__ = [
    "CLASSIFIER_FILENAME",
    "FALLBACK_TTL_S",
    "ReportResult",
    "ReportService",
    "load_classifier",
]
