"""Presidio's AnalyzerEngine as an optional PII engine (`pii: {engine: presidio | both}`).

Offline, Presidio's pattern and checksum recognizers run (emails, phones, cards, IBANs, US SSNs, IPs) on a
blank spaCy English pipeline made here; its NER recognizers (PERSON, LOCATION) need a trained spaCy model
and run only when `spacy_model` points at one on disk -- the `en_core_web_*` models are not published on
PyPI, so none installs offline. It is ~50x slower than the built-in engine (benchmarks/filters.py).
"""

from __future__ import annotations

import functools
import tempfile

# Presidio entity -> our PII type (entities not listed are ignored)
ENTITIES = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN",
    "US_SSN": "SSN",
    "IP_ADDRESS": "IP_ADDRESS",
    "PERSON": "NAME",
    "LOCATION": "ADDRESS",
}


@functools.lru_cache(maxsize=2)
def engine(spacy_model: str | None = None):
    """An AnalyzerEngine that never touches the network; cached per process."""
    import spacy
    import tldextract

    # Presidio's email check calls tldextract, which would fetch the public suffix list; use its snapshot.
    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    if spacy_model is None:
        spacy_model = tempfile.mkdtemp(prefix="posttrain_blank_en_")
        spacy.blank("en").to_disk(spacy_model)
    provider = NlpEngineProvider(
        nlp_configuration={"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": spacy_model}]}
    )
    return AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])


def find_many(texts: list[str], types, spacy_model: str | None = None, score_threshold: float = 0.3):
    """(start, end, type) spans per text, from Presidio."""
    analyzer = engine(spacy_model)
    wanted = [e for e, t in ENTITIES.items() if t in set(types)]
    out = []
    for text in texts:
        results = analyzer.analyze(text, language="en", entities=wanted, score_threshold=score_threshold)
        out.append([(r.start, r.end, ENTITIES[r.entity_type]) for r in results])
    return out
