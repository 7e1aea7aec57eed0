//! Where data comes from and goes to: object stores and local paths ([`storage`]), opening any
//! table the commands read ([`tables`]), and writing results atomically ([`sink`]).

pub mod checks;
pub mod sink;
pub mod storage;
pub mod tables;
