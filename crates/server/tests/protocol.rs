//! Protocol tests in bytes: a real node in-process, raw RESP written to its socket, raw replies
//! asserted (mini-redis style).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use chorus_server::{BoundAddrs, FsyncPolicy, NodeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

struct TestNode {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl TestNode {
    async fn start(fsync: FsyncPolicy) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let config = NodeConfig {
            data_dir: dir.path().to_path_buf(),
            client_addr: "127.0.0.1:0".parse().unwrap(),
            fsync,
            ..NodeConfig::default()
        };
        let (bound_tx, bound_rx) = oneshot::channel::<BoundAddrs>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stop_rx.await;
            };
            chorus_server::run(config, shutdown, Some(bound_tx)).await.unwrap();
        });
        let addr = bound_rx.await.unwrap().client;
        TestNode { addr, stop: Some(stop_tx), task, _dir: dir }
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task).await.unwrap().unwrap();
    }
}

/// Writes `request` and reads until exactly `expected.len()` bytes arrived; asserts they match.
async fn exchange(stream: &mut TcpStream, request: &[u8], expected: &[u8]) {
    stream.write_all(request).await.unwrap();
    let mut reply = vec![0u8; expected.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut reply)).await.unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&reply), String::from_utf8_lossy(expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_set_get_in_bytes() {
    let node = TestNode::start(FsyncPolicy::Always).await;
    let mut stream = node.connect().await;
    exchange(&mut stream, b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n").await;
    exchange(&mut stream, b"PING hello\r\n", b"$5\r\nhello\r\n").await;
    exchange(&mut stream, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n", b"+OK\r\n").await;
    exchange(&mut stream, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", b"$1\r\nv\r\n").await;
    exchange(&mut stream, b"*2\r\n$3\r\nGET\r\n$7\r\nmissing\r\n", b"$-1\r\n").await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_replies_come_back_in_request_order() {
    let node = TestNode::start(FsyncPolicy::Always).await;
    let mut stream = node.connect().await;
    // The write waits for an fsync while PING and the GET of another key are ready at once; the
    // replies must still come back in request order.
    let mut request = Vec::new();
    let mut expected = Vec::new();
    for i in 0..100 {
        request.extend_from_slice(format!("SET key{i} value{i:03}\r\nPING\r\nGET key{i}\r\nGET other\r\n").as_bytes());
        expected.extend_from_slice(format!("+OK\r\n+PONG\r\n$8\r\nvalue{i:03}\r\n$-1\r\n").as_bytes());
    }
    exchange(&mut stream, &request, &expected).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_3_switches_to_resp3() {
    let node = TestNode::start(FsyncPolicy::Never).await;
    let mut stream = node.connect().await;
    stream.write_all(b"HELLO 3\r\n").await.unwrap();
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"%7\r\n", "HELLO 3 answers with a RESP3 map of 7 fields");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_frame_closes_only_its_connection() {
    let node = TestNode::start(FsyncPolicy::Never).await;
    let mut bystander = node.connect().await;
    exchange(&mut bystander, b"SET before 1\r\n", b"+OK\r\n").await;
    let mut bad = node.connect().await;
    bad.write_all(b"*abc\r\n").await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), bad.read_to_end(&mut reply)).await.unwrap().unwrap();
    assert_eq!(reply, b"-ERR Protocol error: invalid multibulk length\r\n", "error, then the node closes");
    exchange(&mut bystander, b"GET before\r\n", b"$1\r\n1\r\n").await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_a_restart_on_the_same_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..2 {
        let config = NodeConfig {
            data_dir: dir.path().to_path_buf(),
            client_addr: "127.0.0.1:0".parse().unwrap(),
            ..NodeConfig::default()
        };
        let (bound_tx, bound_rx) = oneshot::channel::<BoundAddrs>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            chorus_server::run(config, async { drop(stop_rx.await) }, Some(bound_tx)).await.unwrap();
        });
        let addr = bound_rx.await.unwrap().client;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        if round == 0 {
            exchange(&mut stream, b"SET durable yes\r\nINCR counter\r\nINCR counter\r\n", b"+OK\r\n:1\r\n:2\r\n").await;
        } else {
            exchange(&mut stream, b"GET durable\r\nINCR counter\r\nDBSIZE\r\n", b"$3\r\nyes\r\n:3\r\n:2\r\n").await;
        }
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
    }
}
