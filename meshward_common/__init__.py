"""meshward's shared vocabulary: SPIFFE IDs and SVID rules, the registry model, protos, errors,
ports and telemetry names. A leaf package: it imports none of meshward's components."""
