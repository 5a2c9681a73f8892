//! The engine as separate processes: `rivulet jobmanager` ([`jobmanager`], with its
//! [`resources`] and [`rest`] API) and `rivulet taskmanager` ([`taskmanager`]), talking over
//! [`rpc`]; [`client`] is the REST client of the command line.

pub mod client;
pub mod jobmanager;
pub mod resources;
pub mod rest;
pub mod rpc;
pub mod taskmanager;
