"""The byte-level route for the extender verbs: reading a request's text and writing the answer from fragments.

kube-scheduler's Go encoder writes ``ExtenderArgs`` in field order, ``{"Pod":{...},"Nodes":null,"NodeNames":[...]}``.
This route cuts such a body before ``NodeNames`` (:mod:`.wire`), decodes only the pod (a few KiB, once for a
filter call and the prioritize call after it: :class:`.route.ByteRoute`), and finds the rows of the names
(~90 KiB at 5,000 nodes) in the node cache straight from their JSON text (:mod:`.names`), without decoding
them; the filter's answer is joined from per-node JSON fragments (:mod:`.wire`).

It is only a way of reading and writing: the decoded request feeds the same filter and score as a request
decoded as plain JSON (:mod:`strata_scheduler.decoding`), and the answers are the same bytes. Any body it does
not recognise (another field order, a name the cache does not know, a name with escapes) is decoded as plain
JSON. ``Settings.byte_fast_path`` switches it off.
"""
