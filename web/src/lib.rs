//! hull's web console (issue 21): `hull-web`, a separate process that holds no power of its
//! own. It talks to vmmd's socket as a client (so it runs as a user vmmd's socket lets in)
//! and serves HTTPS on one port (8006 by default, as Proxmox VE's): a login with the
//! password `hull-web --set-password` stored as an Argon2id hash, sessions in cookies that
//! are Secure, HttpOnly and SameSite=Strict, a CSRF token in every form that changes
//! something, a throttle on wrong passwords, an audit log, and `/metrics` (vmmd's
//! Prometheus exposition) for a session or a token. See docs/web.md for what it serves and
//! what is still to come.

pub mod assets;
pub mod auth;
pub mod pages;
pub mod server;
pub mod tls;
