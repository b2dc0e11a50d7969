"""Reads a JUnit XML file with junitparser (a JUnit parser CI tools use)
and prints what it found as JSON: per suite, its tests, failures and the
names of the failed cases."""
import json
import sys

from junitparser import Failure, JUnitXml

xml = JUnitXml.fromfile(sys.argv[1])
suites = []
for suite in xml:
    failed = [case.name for case in suite if any(isinstance(r, Failure) for r in case.result)]
    suites.append({"name": suite.name, "tests": suite.tests, "failures": suite.failures,
                   "cases": [case.name for case in suite], "failed": failed})
print(json.dumps({"tests": xml.tests, "failures": xml.failures, "suites": suites}))
