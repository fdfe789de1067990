"""MedicalGPT Course: the toolbox the notebooks and the ``medgpt`` command share."""
