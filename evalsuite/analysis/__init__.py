"""Numbers from stored results: aggregation, the leaderboard row, paired statistics, comparisons.

Read side: pandas and numpy only, never the model stack.
"""
