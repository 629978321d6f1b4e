{{- define "gwc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gwc.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "gwc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "gwc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* selector labels of one component: include "gwc.selector" (list . "signalling") */}}
{{- define "gwc.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "gwc.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "gwc.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "gwc.redisName" -}}
{{ include "gwc.fullname" . }}-redis
{{- end -}}

{{/* The in-cluster URL of the signalling Service, for the agents and NOTES. */}}
{{- define "gwc.serviceUrl" -}}
{{- $scheme := ternary "wss" "ws" .Values.signalling.tls.enabled -}}
{{ $scheme }}://{{ include "gwc.fullname" . }}.{{ .Release.Namespace }}.svc:{{ .Values.service.port }}
{{- end -}}

{{- define "gwc.checks" -}}
{{- $s := .Values.signalling -}}
{{- if le (int $s.terminationGracePeriodSeconds) (add $s.preStopSleepSeconds $s.drainTimeoutSeconds | int) -}}
{{- fail (printf "signalling.terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds + drainTimeoutSeconds (%v): the kubelet would kill a draining node" $s.terminationGracePeriodSeconds (add $s.preStopSleepSeconds $s.drainTimeoutSeconds)) -}}
{{- end -}}
{{- $sentinel := .Values.redis.external.sentinel -}}
{{- if and (not .Values.redis.enabled) (not .Values.redis.external.url) (not .Values.redis.external.existingSecret) (not $sentinel.hosts) -}}
{{- fail "redis.enabled=false needs redis.external.url, redis.external.existingSecret or redis.external.sentinel.hosts" -}}
{{- end -}}
{{- if and $sentinel.hosts (not $sentinel.master) -}}
{{- fail "redis.external.sentinel.hosts needs redis.external.sentinel.master" -}}
{{- end -}}
{{- if and .Values.ingress.enabled (eq .Values.ingress.stickiness "cookie") (eq .Values.ingress.stickyCookie $s.affinityCookie) -}}
{{- fail "ingress.stickyCookie must differ from signalling.affinityCookie: the node overwrites its cookie with its id, which the ingress cannot route on" -}}
{{- end -}}
{{- if and $s.tls.enabled (not $s.tls.secretName) -}}
{{- fail "signalling.tls.enabled needs signalling.tls.secretName" -}}
{{- end -}}
{{- $c := .Values.coturn -}}
{{- if $c.enabled -}}
{{- if not $c.publicHost -}}
{{- fail "coturn.publicHost: the DNS name or IP address browsers and agents reach the bundled coturn at (coturn.enabled is set; the nodes hand out turn:<publicHost>:<port> URLs)" -}}
{{- end -}}
{{- if not $s.turn.secretName -}}
{{- fail "signalling.turn.secretName: the Secret with coturn's static-auth-secret (coturn.enabled is set: coturn and the nodes share it)" -}}
{{- end -}}
{{- if gt (int $c.minPort) (int $c.maxPort) -}}
{{- fail (printf "coturn.minPort (%v) must not exceed coturn.maxPort (%v)" $c.minPort $c.maxPort) -}}
{{- end -}}
{{- if not $c.hostNetwork -}}
{{- $count := add1 (sub (int $c.maxPort) (int $c.minPort)) -}}
{{- if not $c.externalIp -}}
{{- fail "coturn.externalIp: the address of coturn's Service (its load balancer's), needed with coturn.hostNetwork=false: coturn announces it in its relayed candidates instead of the pod's" -}}
{{- end -}}
{{- if gt (int $c.replicas) 1 -}}
{{- fail "coturn.replicas must be 1 with coturn.hostNetwork=false: behind one Service address, a peer's packets to a relay port could reach a pod without the allocation" -}}
{{- end -}}
{{- if gt $count 1000 -}}
{{- fail (printf "coturn.minPort..maxPort: %d relay ports, at most 1000 with coturn.hostNetwork=false (one Service port each): narrow the range or use the host network" $count) -}}
{{- end -}}
{{- if and (eq $c.service.type "NodePort") (or (lt (int $c.port) 30000) (lt (int $c.minPort) 30000) (gt (int $c.port) 32767) (gt (int $c.maxPort) 32767)) -}}
{{- fail "coturn.service.type NodePort needs coturn.port and minPort..maxPort within the node port range 30000-32767 (coturn announces its own ports)" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The TURN URLs the nodes hand out, as JSON: signalling.turn.urls, or, when empty and the
bundled coturn is on, its udp and tcp URLs on coturn.publicHost. */}}
{{- define "gwc.turnUrls" -}}
{{- $urls := .Values.signalling.turn.urls -}}
{{- $c := .Values.coturn -}}
{{- if and $c.enabled (not $urls) $c.publicHost -}}
{{- $hostPort := printf "%s:%d" $c.publicHost (int $c.port) -}}
{{- $urls = list (printf "turn:%s?transport=udp" $hostPort) (printf "turn:%s?transport=tcp" $hostPort) -}}
{{- end -}}
{{- toJson $urls -}}
{{- end -}}
