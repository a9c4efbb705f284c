"""The patient's twitching assessment: a SMART on FHIR app served under /app/.

`answers` turns a QuestionnaireResponse into what is written to the EHR (scores computed from
the Questionnaire's FHIRPath, one Observation per coded answer, one transaction); `smart` is
the SMART App Launch client; `app` the routes.
"""
