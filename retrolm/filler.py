"""Sentence shapes of the built-in filler text: RULER's essay stand-in (eval.ruler_tasks) and the demo's haystack.

The default model was trained on haystacks of these shapes, so the demo hides its needles in the same kind
of text the model has read.
"""
ESSAY_SHAPES = ("The {a} {b} of the {c} is never quite what the {d} expects.",
                "Most people who think about {a} end up thinking about {b} instead.",
                "If you want to understand {a}, watch how a {b} deals with a {c}.",
                "That is why the {a} and the {b} keep changing places.",
                "A {a} is only as good as the {b} it was built for.")
