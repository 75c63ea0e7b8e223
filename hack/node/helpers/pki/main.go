// Command pki writes the test cluster's certificates, keys and kubeconfigs into one directory:
// a cluster CA and a front-proxy CA, the service-account key pair, and a client certificate
// per component with the identity the API server's Node and RBAC authorizers expect. Existing
// files are kept, so a second `up` reuses them.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func main() {
	dir := flag.String("dir", "", "output directory")
	nodeIP := flag.String("node-ip", "10.250.0.1", "node and API server address")
	apiIP := flag.String("service-ip", "10.252.0.1", "the kubernetes Service's ClusterIP")
	node := flag.String("node", "node1", "node name")
	flag.Parse()
	if err := run(*dir, net.ParseIP(*nodeIP), net.ParseIP(*apiIP), *node); err != nil {
		slog.Error("pki failed", "err", err)
		os.Exit(1)
	}
}

func run(dir string, nodeIP, apiIP net.IP, node string) error {
	if dir == "" || nodeIP == nil || apiIP == nil {
		return errors.New("-dir, -node-ip and -service-ip are required")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "done")); err == nil {
		return nil
	}
	root, err := newCA(dir, "ca", "redpacketset-node-ca")
	if err != nil {
		return err
	}
	front, err := newCA(dir, "front-proxy-ca", "redpacketset-node-front-proxy-ca")
	if err != nil {
		return err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("service-account key: %w", err)
	}
	if err := writeKey(filepath.Join(dir, "sa.key"), saKey); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return fmt.Errorf("service-account public key: %w", err)
	}
	if err := writePEM(filepath.Join(dir, "sa.pub"), "PUBLIC KEY", pub); err != nil {
		return err
	}
	local := []net.IP{nodeIP, apiIP, net.ParseIP("127.0.0.1")}
	leaves := []struct {
		name, cn string
		orgs     []string
		server   bool
		ips      []net.IP
		dns      []string
		signer   ca
	}{
		{"apiserver", "kube-apiserver", nil, true, local,
			[]string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"}, root},
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, false, nil, nil, root},
		{"front-proxy-client", "front-proxy-client", nil, false, nil, nil, front},
		{"admin", "redpacketset-node-admin", []string{"system:masters"}, false, nil, nil, root},
		{"controller-manager", "system:kube-controller-manager", nil, false, nil, nil, root},
		{"scheduler", "system:kube-scheduler", nil, false, nil, nil, root},
		{"kubelet", "system:node:" + node, []string{"system:nodes"}, false, nil, nil, root},
		{"kubelet-serving", "system:node:" + node, []string{"system:nodes"}, true, []net.IP{nodeIP}, []string{node}, root},
		{"kube-proxy", "system:kube-proxy", nil, false, nil, nil, root},
		{"coredns", "redpacketset-node:coredns", nil, false, nil, nil, root},
	}
	for _, l := range leaves {
		if err := newLeaf(dir, l.name, l.cn, l.orgs, l.server, l.ips, l.dns, l.signer); err != nil {
			return err
		}
	}
	server := fmt.Sprintf("https://%s:6443", nodeIP)
	for _, user := range []string{"admin", "controller-manager", "scheduler", "kubelet", "kube-proxy", "coredns"} {
		if err := writeKubeconfig(dir, user, server); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(dir, "done"), nil, 0o600)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

func newCA(dir, name, cn string) (ca, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return ca{}, fmt.Errorf("%s key: %w", name, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return ca{}, fmt.Errorf("%s certificate: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return ca{}, fmt.Errorf("%s certificate: %w", name, err)
	}
	if err := writePEM(filepath.Join(dir, name+".crt"), "CERTIFICATE", der); err != nil {
		return ca{}, err
	}
	return ca{cert, key}, writeKey(filepath.Join(dir, name+".key"), key)
}

func newLeaf(dir, name, cn string, orgs []string, server bool, ips []net.IP, dns []string, signer ca) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("%s key: %w", name, err)
	}
	usage := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if server {
		usage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usage, IPAddresses: ips, DNSNames: dns,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer.cert, &key.PublicKey, signer.key)
	if err != nil {
		return fmt.Errorf("%s certificate: %w", name, err)
	}
	if err := writePEM(filepath.Join(dir, name+".crt"), "CERTIFICATE", der); err != nil {
		return err
	}
	return writeKey(filepath.Join(dir, name+".key"), key)
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return writePEM(path, "EC PRIVATE KEY", der)
}

func writePEM(path, typ string, der []byte) error {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func writeKubeconfig(dir, user, server string) error {
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: node
  cluster:
    server: %[1]s
    certificate-authority: %[2]s/ca.crt
users:
- name: %[3]s
  user:
    client-certificate: %[2]s/%[3]s.crt
    client-key: %[2]s/%[3]s.key
contexts:
- name: node
  context: {cluster: node, user: %[3]s}
current-context: node
`, server, dir, user)
	path := filepath.Join(dir, user+".kubeconfig")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
