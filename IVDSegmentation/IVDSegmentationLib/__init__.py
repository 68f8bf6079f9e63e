"""Slicer side of IVDSegmentation, without Qt: MRML nodes <-> files, the worker process, segmentation
nodes, the DICOM database, dependency set-up and the self-test scenarios.

Imports only the light parts of the core (never TensorFlow), so the module loads in any Slicer.
"""
