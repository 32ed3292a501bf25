"""A study's verdicts with a stated error rate: the rule language (rules), the statistics on arrays (stats), and the
judging of a study's rows (judge). Below the report, which draws what they decide."""
