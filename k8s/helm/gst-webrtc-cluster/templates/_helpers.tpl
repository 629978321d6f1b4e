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
{{- end -}}
