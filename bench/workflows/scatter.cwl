cwlVersion: v1.2
class: Workflow
doc: One step scattered over `messages`; each element is one CommandLineTool job.
requirements:
  ScatterFeatureRequirement: {}
inputs:
  messages: string[]
outputs:
  outs:
    type: File[]
    outputSource: each/out
steps:
  each:
    run: echo.cwl
    scatter: message
    in:
      message: messages
    out: [out]
