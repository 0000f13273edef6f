"""lympho: explainable triage of lymphocytosis (reactive vs tumoral) from blood-smear crops."""

__version__ = "0.1.0"
