"""The abliteration workflow's stages: 1 SFT preparation (the model with the behaviour), 2 the direction,
3 abliteration, 7 evaluation.

Stages 4-6 of the training workflows (preference modelling, optimisation, rounds) have no counterpart: nothing is
trained after stage 1, so the numbering keeps stage 7 for the evaluation every workflow ends with.
"""

from tasks.stages import StageTable

ABLITERATE = StageTable("abliterate", {2: "direction_extraction", 3: "abliteration"})
