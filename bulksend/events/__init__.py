"""Tracking by events: TEM's webhook events, as Topics and Events (SNS) delivers them.

::

    TEM webhook ──► Topics and Events topic (SNS) ──┬─► Queues queue (SQS) ──► events.sqs ──┐
                                                     └─► HTTP POST /events/sns ─► events.http ─┤
                                                                                              ▼
                          pipeline.events.EventRouter ──► the campaign's Tracker ──► store (final)

:mod:`bulksend.events.sns` reads and verifies the SNS envelopes; :mod:`bulksend.tem.webhooks`
reads the TEM event inside. Polling stays as the safety net for the emails no event reported.
"""
