//! Channels from elsewhere: Consul, in the original setup's layout. Every
//! imported channel is saved through [`crate::channels::save`], as `PUT` saves it.

pub mod consul;
pub mod watch;
