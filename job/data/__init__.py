"""Data side of the job: VOC + SBD preparation, list files, MindRecord conversion, the pipeline, the demo set.

Submodules are imported explicitly (``from job.data.convert import convert_list``) so that
importing the package never pulls in MindSpore.
"""
