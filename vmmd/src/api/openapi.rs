//! The OpenAPI 3 document, generated from the wire types in hull-spec (schemars) and the
//! routes in [`super::router`]. It is served at `GET /v1/openapi.json` and committed as
//! docs/openapi.json; a test fails when the two drift.

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use hull_spec::api::{
    Created, ImageSource, ImportProgress, ImportRequest, KillRequest, RebootRequest,
    ReprovisionRequest, StopRequest, ValidateOk,
};
use hull_spec::vm::SnapshotRequest;
use hull_spec::{
    ApiErrorBody, Event, ImageManifest, NicTag, Ping, ValidationReport, Vm, VmCreate, VmUpdate,
};

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn body(name: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": reference(name) } } })
}

fn ok(status: &str, description: &str, schema: Value) -> Value {
    json!({ status: { "description": description,
        "content": { "application/json": { "schema": schema } } } })
}

fn op(summary: &str, id: &str, request: Option<&str>, responses: Value) -> Value {
    let mut o = json!({ "summary": summary, "operationId": id, "responses": responses });
    if let (Some(r), Some(map)) = (request, o.as_object_mut()) {
        map.insert("requestBody".into(), body(r));
    }
    if let Some(map) = o.get_mut("responses").and_then(Value::as_object_mut) {
        map.insert(
            "default".into(),
            json!({ "description": "An error (4xx for bad input, 5xx when vmmd failed)",
                "content": { "application/json": { "schema": reference("ApiErrorBody") } } }),
        );
    }
    o
}

fn uuid_param() -> Value {
    json!([{ "name": "uuid", "in": "path", "required": true,
        "schema": { "type": "string", "format": "uuid" } }])
}

/// Builds the document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    fn add<T: JsonSchema>(g: &mut schemars::SchemaGenerator) {
        g.subschema_for::<T>();
    }
    add::<VmCreate>(&mut generator);
    add::<VmUpdate>(&mut generator);
    add::<Vm>(&mut generator);
    add::<ValidationReport>(&mut generator);
    add::<ValidateOk>(&mut generator);
    add::<ApiErrorBody>(&mut generator);
    add::<Ping>(&mut generator);
    add::<Created>(&mut generator);
    add::<StopRequest>(&mut generator);
    add::<hull_spec::api::Runtime>(&mut generator);
    add::<hull_spec::api::Usage>(&mut generator);
    add::<hull_spec::api::ResizeRequest>(&mut generator);
    add::<RebootRequest>(&mut generator);
    add::<KillRequest>(&mut generator);
    add::<ReprovisionRequest>(&mut generator);
    add::<Event>(&mut generator);
    add::<ImageManifest>(&mut generator);
    add::<NicTag>(&mut generator);
    add::<ImageSource>(&mut generator);
    add::<ImportRequest>(&mut generator);
    add::<ImportProgress>(&mut generator);
    add::<SnapshotRequest>(&mut generator);
    let schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    let vm_list = json!({ "type": "array", "items": reference("Vm") });
    let verb = |name: &str, req: Option<&str>| {
        json!({ "parameters": uuid_param(), "post": op(
            &format!("{name} a VM"), &format!("{}Vm", name.to_lowercase()), req,
            ok("200", "The VM after the operation", reference("Vm"))) })
    };
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "hull vmmd API",
            "version": "v1",
            "description": "HTTP/1.1 + JSON over the Unix socket /run/hull/vmmd.sock (root-only by default). Bodies must be application/json. Payloads follow SmartOS vmadm."
        },
        "paths": {
            "/v1/ping": { "get": op("Liveness", "ping", None, ok("200", "vmmd is up", reference("Ping"))) },
            "/v1/openapi.json": { "get": op("This document", "openapi", None, ok("200", "OpenAPI 3 document", json!({"type": "object"}))) },
            "/v1/vms": {
                "get": {
                    "summary": "List VMs", "operationId": "listVms",
                    "parameters": [{ "name": "filter", "in": "query", "required": false,
                        "description": "key=value or key=~regex over dotted paths (nics.0.ip, nics.*.ip, tags.k); repeat for AND",
                        "schema": { "type": "array", "items": { "type": "string" } },
                        "style": "form", "explode": true }],
                    "responses": ok("200", "Matching VMs, by uuid", vm_list)
                },
                "post": op("Create a VM (all or nothing)", "createVm", Some("VmCreate"),
                    ok("201", "The new VM", reference("Vm")))
            },
            "/v1/vms/{uuid}": {
                "parameters": uuid_param(),
                "get": op("Get a VM", "getVm", None, ok("200", "The VM", reference("Vm"))),
                "patch": op("Update a VM (all or nothing)", "updateVm", Some("VmUpdate"),
                    ok("200", "The VM after the update", reference("Vm"))),
                "delete": op("Delete a VM", "deleteVm", None, ok("200", "The deleted VM's uuid", reference("Created")))
            },
            "/v1/vms/{uuid}/start": verb("Start", None),
            "/v1/vms/{uuid}/stop": verb("Stop", Some("StopRequest")),
            "/v1/vms/{uuid}/reboot": verb("Reboot", Some("RebootRequest")),
            "/v1/vms/{uuid}/kill": verb("Kill", Some("KillRequest")),
            "/v1/vms/{uuid}/reprovision": { "parameters": uuid_param(),
                "post": op("Make a zone's root (a microVM's boot disk) anew from an image, keeping its uuid, NICs, metadata, delegated dataset and other disks (stopped first, started after)",
                    "reprovisionVm", Some("ReprovisionRequest"), ok("200", "The VM, running", reference("Vm"))) },
            "/v1/vms/{uuid}/runtime": { "parameters": uuid_param(),
                "get": op("Where a running zone's console and runtime directory are", "getRuntime", None,
                    ok("200", "The zone's runtime", reference("Runtime"))) },
            "/v1/vms/{uuid}/info": { "parameters": uuid_param(),
                "get": op("A running microVM's VMM figures: status, vCPU exits, bytes per device", "getInfo", None,
                    ok("200", "The VMM's figures", json!({"type": "object"}))) },
            "/v1/validate/create": { "post": op("Validate a create payload (host checks included)",
                "validateCreate", Some("VmCreate"), ok("200", "Valid", reference("ValidateOk"))) },
            "/v1/validate/update": { "post": {
                "summary": "Validate an update payload for a brand", "operationId": "validateUpdate",
                "parameters": [{ "name": "brand", "in": "query", "required": true, "schema": { "type": "string" } }],
                "requestBody": body("VmUpdate"),
                "responses": ok("200", "Valid", reference("ValidateOk")) } },
            "/v1/vms/{uuid}/snapshots": { "parameters": uuid_param(),
                "post": op("Snapshot a stopped zone's root or every disk of a stopped microVM", "createSnapshot", Some("SnapshotRequest"),
                    ok("201", "The VM with its snapshots", reference("Vm"))) },
            "/v1/vms/{uuid}/snapshots/{name}": {
                "parameters": [uuid_param()[0].clone(), { "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
                "delete": op("Delete a snapshot", "deleteSnapshot", None, ok("200", "The VM", reference("Vm"))) },
            "/v1/vms/{uuid}/snapshots/{name}/rollback": {
                "parameters": [uuid_param()[0].clone(), { "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
                "post": op("Roll a stopped zone's root, or a microVM's disks (stopping and starting it again if it runs), back to a snapshot; newer microVM snapshots go", "rollbackSnapshot", None, ok("200", "The VM", reference("Vm"))) },
            "/v1/images": {
                "get": op("List installed images", "listImages", None,
                    ok("200", "Manifests", json!({ "type": "array", "items": reference("ImageManifest") }))),
                "post": {
                    "summary": "Install an image: a manifest part, then the file, streamed and verified (all or nothing)",
                    "operationId": "installImage",
                    "requestBody": { "required": true, "content": { "multipart/form-data": { "schema": {
                        "type": "object", "required": ["manifest", "file"],
                        "properties": { "manifest": reference("ImageManifest"),
                            "file": { "type": "string", "format": "binary" } } } } } },
                    "responses": ok("201", "The installed manifest", reference("ImageManifest"))
                }
            },
            "/v1/images/{uuid}": {
                "parameters": uuid_param(),
                "get": op("Get an image manifest", "getImage", None, ok("200", "Manifest", reference("ImageManifest"))),
                "delete": op("Delete an image no guest uses", "deleteImage", None, ok("200", "Deleted", json!({"type": "object"})))
            },
            "/v1/images/vacuum": { "post": op("Delete every image no guest uses", "vacuumImages", None,
                ok("200", "The deleted uuids", json!({"type": "object", "properties": {"deleted": {"type": "array", "items": {"type": "string", "format": "uuid"}}}}))) },
            "/v1/images/avail": { "get": op("Images the sources offer", "availImages", None,
                ok("200", "Manifests", json!({ "type": "array", "items": reference("ImageManifest") }))) },
            "/v1/images/import": { "post": {
                "summary": "Import an image from the sources; the reply streams progress lines ending in done or error",
                "operationId": "importImage", "requestBody": body("ImportRequest"),
                "responses": { "200": { "description": "ImportProgress lines",
                    "content": { "application/x-ndjson": { "schema": reference("ImportProgress") } } },
                    "default": { "description": "An error before the download started",
                        "content": { "application/json": { "schema": reference("ApiErrorBody") } } } } } },
            "/v1/sources": {
                "get": op("List image sources", "listSources", None,
                    ok("200", "Sources", json!({ "type": "array", "items": reference("ImageSource") }))),
                "post": op("Add an image source", "addSource", Some("ImageSource"), ok("201", "The source", reference("ImageSource"))),
                "delete": {
                    "summary": "Remove an image source", "operationId": "deleteSource",
                    "parameters": [{ "name": "url", "in": "query", "required": true, "schema": { "type": "string" } }],
                    "responses": ok("200", "Removed", json!({"type": "object"}))
                }
            },
            "/v1/nictags": {
                "get": op("List nic tags", "listNicTags", None,
                    ok("200", "Tags", json!({ "type": "array", "items": reference("NicTag") }))),
                "post": op("Add a nic tag", "addNicTag", Some("NicTag"), ok("201", "The tag", reference("NicTag")))
            },
            "/v1/nictags/{name}": {
                "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
                "delete": op("Delete an unused nic tag", "deleteNicTag", None, ok("200", "Deleted", json!({"type": "object"})))
            },
            "/v1/events": { "get": {
                "summary": "Stream guest events, one JSON object per line", "operationId": "events",
                "parameters": [
                    { "name": "uuid", "in": "query", "required": false, "schema": { "type": "string", "format": "uuid" } },
                    { "name": "full", "in": "query", "required": false, "schema": { "type": "boolean" } }],
                "responses": { "200": { "description": "An endless stream of Event objects",
                    "content": { "application/x-ndjson": { "schema": reference("Event") } } } } } }
        },
        "components": { "schemas": schemas }
    });
    // Pause, resume, usage, send and receive: their own object (one json! of every path is past the macro's
    // recursion limit).
    let transfer = json!({
        "/v1/vms/{uuid}/pause": { "parameters": uuid_param(),
            "post": op("Pause a running zone: freeze its processes (a stop resumes it first)", "pauseVm", None,
                ok("200", "The VM, paused", reference("Vm"))) },
        "/v1/vms/{uuid}/resume": { "parameters": uuid_param(),
            "post": op("Resume a paused zone", "resumeVm", None,
                ok("200", "The VM, running", reference("Vm"))) },
        "/v1/vms/{uuid}/console": { "parameters": uuid_param(),
            "get": op("Attach to a running guest's console: with `Connection: upgrade` and `Upgrade: hull-console`, vmmd answers 101 and the connection carries the console's bytes both ways (earlier output replayed first); 426 without the headers", "attachConsole",
                None, json!({ "101": { "description": "Switching to the console's byte stream" } })) },
        "/v1/vms/{uuid}/resize": { "parameters": uuid_param(),
            "post": op("Set a running zone's console window size (its foreground job gets SIGWINCH)", "resizeConsole",
                Some("ResizeRequest"), ok("200", "Done", json!({"type": "object"}))) },
        "/v1/metrics": {
            "get": {
                "summary": "The host's and every guest's figures in Prometheus's text format 0.0.4, named as node_exporter and cAdvisor name theirs (guests by a uuid label)",
                "operationId": "getMetrics",
                "responses": { "200": { "description": "The exposition",
                    "content": { "text/plain": { "schema": { "type": "string" } } } },
                    "default": { "description": "An error",
                        "content": { "application/json": { "schema": reference("ApiErrorBody") } } } } } },
        "/v1/vms/{uuid}/usage": { "parameters": uuid_param(),
            "get": op("A running guest's cgroup figures: CPU time, memory, processes, OOM kills", "getUsage", None,
                ok("200", "The figures", reference("Usage"))) },
        "/v1/vms/{uuid}/send": { "parameters": uuid_param(),
            "get": {
                "summary": "The VM as a send stream (record, root and delegated dataset, or disks; checksummed sections), or with since=SNAPSHOT its changes since that snapshot: a running VM is stopped first and stays stopped",
                "operationId": "sendVm",
                "parameters": [{ "name": "since", "in": "query", "required": false,
                    "description": "a snapshot of the VM: only the changes since it (the receiver's copy must be what it was)",
                    "schema": { "type": "string" } }],
                "responses": { "200": { "description": "The stream (vmadm receive reads it)",
                    "content": { "application/x-hull-send": { "schema": { "type": "string", "format": "binary" } } } },
                    "default": { "description": "An error before the stream started",
                        "content": { "application/json": { "schema": reference("ApiErrorBody") } } } } } },
        "/v1/vms/{uuid}/logs": { "parameters": uuid_param(),
            "get": {
                "summary": "A docker zone's logs: its process's output on the console, kept across its runs (the last 1 to 2 MiB); 409 for other guests",
                "operationId": "getLogs",
                "responses": { "200": { "description": "The output, as the process wrote it",
                    "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } },
                    "default": { "description": "An error",
                        "content": { "application/json": { "schema": reference("ApiErrorBody") } } } } } },
        "/v1/vms/receive": {
            "post": {
                "summary": "Make a VM from a send stream (root only): refused before any data is written if its uuid exists here or its images or nic tags do not; all or nothing. A stream of changes applies to this host's stopped copy if it is what the sender's snapshot was, or leaves it as it was",
                "operationId": "receiveVm",
                "requestBody": { "required": true, "content": { "application/x-hull-send": {
                    "schema": { "type": "string", "format": "binary" } } } },
                "responses": ok("201", "The VM, stopped", reference("Vm")) } }
    });
    if let (Some(paths), Value::Object(more)) = (doc["paths"].as_object_mut(), transfer) {
        paths.extend(more);
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/openapi.json must be what the code generates. Regenerate with
    /// `HULL_UPDATE_OPENAPI=1 cargo nextest run -p vmmd openapi`.
    #[test]
    fn committed_openapi_document_matches_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let mut generated = serde_json::to_string_pretty(&document()).expect("serializes");
        generated.push('\n');
        if std::env::var_os("HULL_UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).expect("write docs/openapi.json");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/openapi.json is out of date; run HULL_UPDATE_OPENAPI=1 cargo nextest run -p vmmd openapi"
        );
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        let text = doc.to_string();
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part.chars().take_while(|c| *c != '"').collect();
            assert!(schemas.contains_key(&name), "dangling $ref {name}");
        }
    }
}
