cwlVersion: v1.2
class: Workflow
doc: |
  The scatter of scatter.cwl beside one more run of the same tool, `long`, which asks for a little more
  memory: it never shares a Slurm job with the scattered ones (packing needs equal resources). So it
  costs the others only the CPU it holds, not a wait behind it: the baseline of bench/scatter.py's
  long-element comparison.
requirements:
  ScatterFeatureRequirement: {}
inputs:
  messages: string[]
  long: string
outputs:
  outs:
    type: File[]
    outputSource: each/out
  long_out:
    type: File
    outputSource: long/out
steps:
  each:
    run: echo.cwl
    scatter: message
    in:
      message: messages
    out: [out]
  long:
    run: echo.cwl
    requirements:
      ResourceRequirement: {ramMin: 300}
    in:
      message: long
    out: [out]
