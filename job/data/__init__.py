"""Data side of the job: list files, MindRecord conversion, the training pipeline, the demo set.

Submodules are imported explicitly (``from job.data.convert import convert_list``) so that
importing the package never pulls in MindSpore.
"""
