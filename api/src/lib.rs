//! Types of the network-policy-api group `policy.networking.k8s.io`.
