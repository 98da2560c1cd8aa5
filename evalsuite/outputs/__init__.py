"""What evalsuite writes for people and other tools: the HTML report, paper tables, exports, trackers.

Read side: each output renders what ``store`` and ``analysis`` computed, never recomputing it.
"""
