//! The generated CRDs: names, scope, versions, and the validation the schema carries.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use netpol_api::crds;

fn by_name(name: &str) -> CustomResourceDefinition {
    crds()
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no CRD named {name}"))
}

fn schema(crd: &CustomResourceDefinition) -> JSONSchemaProps {
    crd.spec.versions[0]
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .clone()
        .unwrap()
}

fn prop(s: &JSONSchemaProps, path: &[&str]) -> JSONSchemaProps {
    let mut cur = s.clone();
    for p in path {
        cur = if *p == "[]" {
            match cur.items.clone() {
                Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(s)) => *s,
                other => panic!("no items schema at {p}: {other:?}"),
            }
        } else {
            cur.properties
                .as_ref()
                .and_then(|m| m.get(*p))
                .cloned()
                .unwrap_or_else(|| panic!("no property {p} in path {path:?}"))
        };
    }
    cur
}

#[test]
fn three_cluster_scoped_crds_with_one_served_stored_version() {
    let all = crds();
    let mut names: Vec<_> = all
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "adminnetworkpolicies.policy.networking.k8s.io",
            "baselineadminnetworkpolicies.policy.networking.k8s.io",
            "clusternetworkpolicies.policy.networking.k8s.io",
        ]
    );
    for crd in &all {
        assert_eq!(crd.spec.group, "policy.networking.k8s.io");
        assert_eq!(crd.spec.scope, "Cluster", "{:?}", crd.metadata.name);
        assert_eq!(crd.spec.versions.len(), 1);
        let v = &crd.spec.versions[0];
        assert!(v.served && v.storage);
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "status subresource"
        );
    }
    let anp = by_name("adminnetworkpolicies.policy.networking.k8s.io");
    assert_eq!(anp.spec.versions[0].name, "v1alpha1");
    assert_eq!(anp.spec.names.kind, "AdminNetworkPolicy");
    assert_eq!(
        anp.spec.names.short_names.as_deref(),
        Some(&["anp".to_string()][..])
    );
    let cnp = by_name("clusternetworkpolicies.policy.networking.k8s.io");
    assert_eq!(cnp.spec.versions[0].name, "v1alpha2");
    assert_eq!(
        cnp.spec.names.short_names.as_deref(),
        Some(&["cnp".to_string()][..])
    );
}

#[test]
fn enums_ranges_and_unions_are_in_the_schema() {
    let anp = schema(&by_name("adminnetworkpolicies.policy.networking.k8s.io"));
    let prio = prop(&anp, &["spec", "priority"]);
    assert_eq!((prio.minimum, prio.maximum), (Some(0.0), Some(1000.0)));
    let action = prop(&anp, &["spec", "egress", "[]", "action"]);
    let values: Vec<_> = action.enum_.unwrap().into_iter().map(|v| v.0).collect();
    assert_eq!(
        values,
        [
            serde_json::json!("Allow"),
            serde_json::json!("Deny"),
            serde_json::json!("Pass")
        ]
    );
    let subject = prop(&anp, &["spec", "subject"]);
    assert_eq!(
        (subject.min_properties, subject.max_properties),
        (Some(1), Some(1))
    );
    let peer = prop(&anp, &["spec", "egress", "[]", "to", "[]"]);
    assert_eq!(
        (peer.min_properties, peer.max_properties),
        (Some(1), Some(1))
    );
    let to = prop(&anp, &["spec", "egress", "[]", "to"]);
    assert_eq!((to.min_items, to.max_items), (Some(1), Some(100)));
    let protocol = prop(
        &anp,
        &[
            "spec",
            "egress",
            "[]",
            "ports",
            "[]",
            "portNumber",
            "protocol",
        ],
    );
    assert_eq!(
        protocol.default.map(|d| d.0),
        Some(serde_json::json!("TCP"))
    );
    let networks = prop(&anp, &["spec", "egress", "[]", "to", "[]", "networks"]);
    assert!(
        networks.x_kubernetes_validations.unwrap()[0]
            .rule
            .contains("isCIDR")
    );

    let banp_crd = by_name("baselineadminnetworkpolicies.policy.networking.k8s.io");
    let banp = schema(&banp_crd);
    let rules = banp
        .x_kubernetes_validations
        .clone()
        .expect("root CEL rule on BANP");
    assert_eq!(rules[0].rule, "self.metadata.name == 'default'");
    let action = prop(&banp, &["spec", "ingress", "[]", "action"]);
    assert_eq!(action.enum_.unwrap().len(), 2, "BANP: Allow|Deny");

    let cnp = schema(&by_name("clusternetworkpolicies.policy.networking.k8s.io"));
    let tier = prop(&cnp, &["spec", "tier"]);
    assert_eq!(tier.enum_.unwrap().len(), 2);
    let proto = prop(&cnp, &["spec", "ingress", "[]", "protocols", "[]"]);
    assert_eq!(
        (proto.min_properties, proto.max_properties),
        (Some(1), Some(1))
    );
    let from = prop(&cnp, &["spec", "ingress", "[]", "from"]);
    assert_eq!(from.max_items, Some(25));
    let range = prop(
        &cnp,
        &[
            "spec",
            "egress",
            "[]",
            "protocols",
            "[]",
            "tcp",
            "destinationPort",
            "range",
        ],
    );
    assert_eq!(
        range.x_kubernetes_validations.unwrap()[0].rule,
        "self.start < self.end"
    );
}

/// Kubernetes rejects CRDs whose schema is not structural: every node must name its type
/// (no untyped `anyOf`/`oneOf` branches), and nothing may use `$ref` or `additionalProperties`
/// together with `properties`. This walks the generated schemas and checks those rules.
#[test]
fn schemas_are_structural() {
    fn walk(path: &str, s: &JSONSchemaProps) {
        let untyped_ok = s.x_kubernetes_int_or_string == Some(true)
            || s.x_kubernetes_preserve_unknown_fields == Some(true);
        assert!(s.type_.is_some() || untyped_ok, "{path}: no type");
        assert!(s.ref_path.is_none(), "{path}: $ref");
        assert!(
            s.one_of.is_none() && s.any_of.is_none() && s.all_of.is_none() && s.not.is_none(),
            "{path}: composition"
        );
        assert!(
            !(s.properties.is_some() && s.additional_properties.is_some()),
            "{path}: properties and additionalProperties"
        );
        for (k, v) in s.properties.iter().flatten() {
            walk(&format!("{path}.{k}"), v);
        }
        if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(i)) = &s.items {
            walk(&format!("{path}[]"), i);
        }
        if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(a)) = &s.additional_properties {
            walk(&format!("{path}{{}}"), a);
        }
    }
    for crd in crds() {
        walk(crd.metadata.name.as_deref().unwrap(), &schema(&crd));
    }
}
